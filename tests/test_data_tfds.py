"""TFDS sources without TensorFlow: mock data, a tiny prepared coco_captions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import pipeline
from data import text_templates
from data import tokenizer as tokenizer_lib
import tiny_tfds

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck"]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven",
         "eight", "nine"]


@pytest.fixture(scope="module")
def tok():
  texts = []
  for d in range(10):
    texts += text_templates.digit_captions(d)
    texts += [t for qa in text_templates.digit_qa(d) for t in qa]
  for name in CIFAR10:
    texts += text_templates.class_captions(name)
  texts += [f"caption {i} number {j}" for i in range(8) for j in range(3)]
  return tokenizer_lib.Tokenizer.train(texts, None, 200)


def _make(name, tok, **kw):
  args = dict(split="train", batch_size=4, image_size=16, channels=1,
              max_text_len=24, tokenizer=tok, seed=0, num_epochs=1,
              drop_remainder=False)
  args.update(kw)
  return pipeline.make_dataset(name, **args)


def _all(it):
  batches = list(it)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _mock(n=8):
  return tfds.testing.mock_data(num_examples=n,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def test_mnist_mock_images_labels_text(tok):
  with _mock():
    records = tfds.data_source("mnist", split="train")
    want = {np.asarray(r["image"], np.uint8).tobytes(): int(r["label"])
            for r in (records[i] for i in range(len(records)))}
    got = _all(_make("mnist", tok, image_size=28))
  assert set(got) == {"image", "label", "caption", "vqa", "vqa_prompt_len"}
  assert got["image"].shape == (8, 28, 28, 1)
  for img, label, cap, vqa in zip(got["image"], got["label"], got["caption"],
                                  got["vqa"]):
    raw = np.rint((img + 1) * 127.5).astype(np.uint8)
    assert want[raw.tobytes()] == label  # pixels and label of one record
    assert tok.decode(cap) in text_templates.digit_captions(label)
    sep = list(vqa).index(3)
    if tok.decode(vqa[:sep]) == "what digit is this?":
      assert tok.decode(vqa[sep + 1:]) == WORDS[label]


def test_cifar10_mock_class_captions(tok):
  with _mock():
    got = _all(_make("cifar10", tok, channels=3))
  assert set(got) == {"image", "label", "caption"}
  assert got["image"].shape == (8, 16, 16, 3)
  for label, cap in zip(got["label"], got["caption"]):
    assert CIFAR10[label] in tok.decode(cap).split()


def test_imagenet_mock_labels_only():
  with _mock(6):
    # no text, so no tokenizer needed
    got = _all(_make("imagenet2012", None, image_size=12, channels=1))
    info = pipeline.describe("imagenet2012")
  assert set(got) == {"image", "label"}
  assert got["image"].shape == (6, 12, 12, 1)
  assert ((got["label"] >= 0) & (got["label"] < 1000)).all()
  assert info["num_classes"] == 1000 and not info["has_caption"]


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return tiny_tfds.prepare_tiny_coco(data_dir)


def test_coco_captions_from_prepared_files(coco_dir, tok):
  got = _all(_make("coco_captions", tok, data_dir=coco_dir, num_epochs=10,
                   channels=3))
  assert set(got) == {"image", "label", "caption"}
  assert (got["label"] == -1).all() and len(got["label"]) == 60
  seen = {}
  for img, cap in zip(got["image"], got["caption"]):
    i = int(np.rint((img[8, 8, 0] + 1) * 127.5)) // 30  # grey level 30 * i
    text = tok.decode(cap)
    assert text in [f"caption {i} number {j}" for j in range(1 + i % 3)]
    seen.setdefault(i, set()).add(text)
  assert sorted(seen) == list(range(6))
  # each epoch picks again: over 10 epochs an example with 3 captions shows
  # more than one (all equal has probability 3^-9)
  assert len(seen[2]) > 1 and len(seen[5]) > 1
  again = _all(_make("coco_captions", tok, data_dir=coco_dir, num_epochs=10,
                     channels=3))
  np.testing.assert_array_equal(again["caption"], got["caption"])
  corpus = pipeline.text_corpus("coco_captions", data_dir=coco_dir)
  assert sorted(corpus) == sorted(f"caption {i} number {j}" for i in range(6)
                                  for j in range(1 + i % 3))


def test_not_prepared_gives_clear_error(tmp_path, tok):
  for name in ("mnist", "coco_captions"):
    with pytest.raises(ValueError, match=f"tfds build {name} --data_dir="
                       f"{tmp_path}"):
      _make(name, tok, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="Unsupported TFDS|Unknown dataset"):
    _make("svhn", tok)
