"""The digits pipeline: batch contents, determinism, shards, resume, speed."""

from __future__ import annotations

import collections
import json

from etils import epath
import grain
import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from data import digits
from data import pipeline
from data import tokenizer as tokenizer_lib

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven",
         "eight", "nine"]


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.Tokenizer.train(digits.text_corpus(), None, 128)


def _make(tok, **kw):
  args = dict(name="digits", split="train", batch_size=32, image_size=8,
              channels=1, max_text_len=24, tokenizer=tok, seed=0)
  args.update(kw)
  return pipeline.make_dataset(**args)


def _sklearn_split(split):
  """sklearn's images (integer values 0..16) and labels of `split`."""
  raw = sk_datasets.load_digits()
  idx = digits.split_indices(split)
  return raw.images[idx], raw.target[idx]


def _to_sklearn_values(image):
  """Model image in [-1, 1] back to the 0..16 scale (exact after rounding:
  uint8 storage errs by at most 16 / 510)."""
  return np.rint((np.asarray(image) + 1.0) * 8.0)


def _fingerprint(values, label):
  return (np.asarray(values, np.int64).tobytes(), int(label))


def test_batch_keys_shapes_and_contents(tok):
  batch = next(_make(tok))
  assert set(batch) == {"image", "label", "caption", "vqa", "vqa_prompt_len"}
  assert batch["image"].shape == (32, 8, 8, 1)
  assert batch["image"].dtype == np.float32
  for k in ("label", "caption", "vqa", "vqa_prompt_len"):
    assert batch[k].dtype == np.int32, k
  assert batch["caption"].shape == batch["vqa"].shape == (32, 24)
  # images and labels are the sklearn ones (matched by pixels)
  images, labels = _sklearn_split("train")
  for img, label in zip(batch["image"], batch["label"]):
    err = np.abs(images / 8.0 - 1.0 - img[..., 0]).reshape(
        len(images), -1).max(-1)
    i = int(np.argmin(err))
    assert err[i] <= 1.0 / 255 + 1e-6 and labels[i] == label
  # captions name the digit; vqa = question <sep> right answer <eos>
  for label, cap, vqa, plen in zip(batch["label"], batch["caption"],
                                   batch["vqa"], batch["vqa_prompt_len"]):
    assert tok.decode(cap) in digits.captions(label)
    sep = list(vqa).index(3)
    assert plen == sep + 1
    question, answer = tok.decode(vqa[:sep]), tok.decode(vqa[sep + 1:])
    assert answer == dict(digits.qa_pairs(label))[question]
    if question == "what digit is this?":
      assert answer == WORDS[label]
    eos = list(vqa).index(2)
    assert not vqa[eos + 1:].any()


def test_channels_and_resize(tok):
  batch = next(_make(tok, image_size=16, channels=3))
  assert batch["image"].shape == (32, 16, 16, 3)
  np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0


def test_deterministic_for_a_seed(tok):
  a, b, c = _make(tok, seed=3), _make(tok, seed=3), _make(tok, seed=4)
  for _ in range(4):
    x, y, z = next(a), next(b), next(c)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(x["label"], z["label"])


def test_shards_are_disjoint_and_cover_the_split(tok):
  images, labels = _sklearn_split("train")
  want = collections.Counter(_fingerprint(i, l) for i, l in zip(images,
                                                                 labels))
  got = collections.Counter()
  sizes = []
  for shard in range(3):
    it = _make(tok, batch_size=64, shard_index=shard, shard_count=3,
               num_epochs=1, drop_remainder=False)
    n = 0
    for batch in it:
      n += len(batch["label"])
      got.update(_fingerprint(_to_sklearn_values(i[..., 0]), l)
                 for i, l in zip(batch["image"], batch["label"]))
    sizes.append(n)
  # 1500 = 7 global batches of 3 x 64, then 156 = 64 + 64 + 28.
  assert sizes == [7 * 64 + 64, 7 * 64 + 64, 7 * 64 + 28]
  assert got == want  # as multisets: every example once, over all shards


def test_hosts_concatenated_are_the_one_host_global_batch(tok):
  """Host i's batch is slice i of the one-host batch of the global size (same examples, order
  and text variants), also across the epoch boundary (1500 = 23 x 64 + 28)."""
  hosts = [_make(tok, batch_size=16, shard_index=i, shard_count=4) for i in range(4)]
  one = _make(tok, batch_size=64)
  for _ in range(25):
    want = next(one)
    parts = [next(h) for h in hosts]
    for k in want:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k], err_msg=k)
  assert set(want) == {"image", "label", "caption", "vqa", "vqa_prompt_len"}


def test_drop_remainder_gives_every_host_the_same_batches(tok):
  counts = [len(list(_make(tok, batch_size=64, shard_index=i, shard_count=3, num_epochs=1)))
            for i in range(3)]
  assert counts == [7, 7, 7]  # 1500 // 192; the last, partial global batch is dropped


def test_epochs_reshuffle(tok):
  it = _make(tok, batch_size=1500, num_epochs=2)
  e1, e2 = next(it), next(it)
  assert not np.array_equal(e1["label"], e2["label"])
  np.testing.assert_array_equal(np.sort(e1["label"]), np.sort(e2["label"]))
  with pytest.raises(StopIteration):
    next(it)


def test_get_state_set_state_resumes_exactly(tok):
  it = _make(tok, seed=7)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as orbax stores it
  expected = [next(it) for _ in range(3)]
  fresh = _make(tok, seed=7)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_grain_checkpoint_handler_round_trip(tok, tmp_path):
  it = _make(tok, seed=2)
  for _ in range(3):
    next(it)
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), it)
  want = next(it)
  fresh = grain.checkpoint.CheckpointHandler().restore(
      epath.Path(tmp_path), _make(tok, seed=2))
  got = next(fresh)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def test_truncation_is_counted(tok):
  it = _make(tok, max_text_len=24)
  for _ in range(3):
    next(it)
  assert it.stats() == {"examples": 96, "caption_truncated": 0,
                        "vqa_truncated": 0}
  # Every caption has >= 4 words and every question + answer >= 5, and
  # BPE pieces never span spaces: with 4 tokens (3 + eos) all are cut.
  it = _make(tok, max_text_len=4)
  batch = next(it)
  next(it)
  assert it.stats() == {"examples": 64, "caption_truncated": 64,
                        "vqa_truncated": 64}
  assert (batch["caption"][:, -1] == 2).all()
  assert (batch["vqa"][:, -1] == 2).all()


def test_bad_arguments(tok):
  with pytest.raises(ValueError, match="Unknown dataset"):
    _make(tok, name="nope")
  with pytest.raises(ValueError, match="channels"):
    _make(tok, channels=2)
  with pytest.raises(ValueError, match="shard_index"):
    _make(tok, shard_index=3, shard_count=3)
  with pytest.raises(ValueError, match="at least 4"):
    _make(tok, max_text_len=3)
  with pytest.raises(ValueError, match="pass the trained tokenizer"):
    _make(None)
  with pytest.raises(ValueError, match="digits split"):
    _make(tok, split="validation")


def test_eval_examples_have_raw_strings():
  examples = pipeline.eval_examples("digits", split="test", num=16)
  _, labels = _sklearn_split("test")
  assert [e["label"] for e in examples] == list(labels[:16])
  questions = set()
  for e in examples:
    assert e["image"].shape == (8, 8, 1)
    assert e["captions"] == digits.captions(e["label"])
    assert dict(digits.qa_pairs(e["label"]))[e["question"]] == e["answer"]
    questions.add(e["question"])
  assert len(questions) == len(digits.qa_pairs(0))  # all question types


def test_heldout_split_is_the_default_of_eval_examples():
  # tfds' own held-out split names (catalog): ImageNet 'validation', COCO captions 'val'.
  assert pipeline.heldout_split("imagenet2012") == "validation"
  assert pipeline.heldout_split("coco_captions") == "val"
  for name in ("digits", "mnist", "cifar10", "folder"):
    assert pipeline.heldout_split(name) == "test"
  _, labels = _sklearn_split("test")
  assert [e["label"] for e in pipeline.eval_examples("digits", num=5)] == list(labels[:5])
  with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
    pipeline.heldout_split("svhn")


def test_describe_and_corpus():
  info = pipeline.describe("digits")
  assert info["num_examples"] == 1500 and info["num_classes"] == 10
  assert info["has_caption"] and info["has_vqa"]
  assert set(pipeline.text_corpus("digits")) == set(digits.text_corpus())


def test_state_resharded_between_host_counts_continues_the_stream(tok):
  """A state saved by host 1 of 2 after 3 global batches, mapped to one host (and one host's to
  4 hosts), continues the stream: oracle, the 2-host (1-host) run going on uninterrupted."""
  two = [_make(tok, batch_size=16, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(3):
    for h in two:
      next(h)
  one = _make(tok, batch_size=32)
  state, examples = one.reshard_state(json.loads(json.dumps(two[1].get_state())), 2)
  assert examples == 3 * 32
  one.set_state(state)
  for _ in range(2):
    got, parts = next(one), [next(h) for h in two]
    for k in got:
      np.testing.assert_array_equal(got[k], np.concatenate([p[k] for p in parts]), err_msg=k)
  four = [_make(tok, batch_size=8, shard_index=i, shard_count=4) for i in range(4)]
  for h in four:
    h.set_state(h.reshard_state(one.get_state(), 1)[0])
  want, parts = next(one), [next(h) for h in four]
  for k in want:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k], err_msg=k)


def test_an_unmappable_saved_position_restarts_at_the_checkpoints_global_batch(tok, tmp_path,
                                                                               caplog):
  """grain's worker processes save per-worker states that no other host count can map; the
  Checkpointer then restarts the stream at global batch `step` (the train loop draws one global
  batch a step). Oracle: a 2-host run going on uninterrupted after 3 global batches."""
  from mdm_jax.training import checkpoint as ckpt_lib
  two = [_make(tok, batch_size=16, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(3):
    for h in two:
      next(h)
  saved = tmp_path / "checkpoints" / "3" / "data_iter"
  saved.mkdir(parents=True)
  worker_state = {"workers_state": {"0": {"next_index": 2}}, "iterations_to_skip": {"0": 1},
                  "last_worker_index": 0}   # the shape of grain's mp_prefetch state
  (saved / "process_0-of-2.json").write_text(json.dumps(worker_state))
  one = _make(tok, batch_size=32)
  assert one.reshard_state(worker_state, 2) is None
  ckpt = ckpt_lib.Checkpointer(tmp_path)
  try:
    with caplog.at_level("WARNING"):
      ckpt._reshard_data_iter(3, one, 2)  # pylint: disable=protected-access
  finally:
    ckpt.close()
  assert "restarts at the saved global position instead (global batch 3" in caplog.text
  for _ in range(2):
    got, parts = next(one), [next(h) for h in two]
    for k in got:
      np.testing.assert_array_equal(got[k], np.concatenate([p[k] for p in parts]), err_msg=k)
