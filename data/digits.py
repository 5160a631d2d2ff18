"""The bundled default dataset: scikit-learn's 8x8 handwritten digits.

1797 grey 8x8 images (values 0..16, ink high) ship inside scikit-learn, so the
default run needs no download. A fixed stratified split gives 1500 training and
297 test images. Text comes from the label: caption templates and VQA pairs
(`data.text_templates`).
"""

from __future__ import annotations

import functools

import numpy as np

from data import source as source_lib
from data import text_templates

NUM_CLASSES = 10
NUM_TRAIN = 1500
NUM_TEST = 297
SPLITS = ("train", "test")
_SPLIT_SEED = 0


@functools.cache
def _split_indices() -> dict[str, np.ndarray]:
  # Imported here: scikit-learn is slow to import and only digits needs it.
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  labels = sk_datasets.load_digits().target
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=NUM_TEST, stratify=labels,
      random_state=_SPLIT_SEED)
  return {"train": np.sort(train), "test": np.sort(test)}


def split_indices(split: str) -> np.ndarray:
  """Indices into `load_digits()` of `split` ('train' or 'test'), sorted."""
  if split not in SPLITS:
    raise ValueError(f"Unknown digits split {split!r}; use one of {SPLITS}.")
  return _split_indices()[split].copy()


@functools.cache
def _load_all() -> tuple[np.ndarray, np.ndarray]:
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  d = sk_datasets.load_digits()
  # 0..16 ink intensity -> 0..255, ink bright as in MNIST.
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
  return images, d.target.astype(np.int32)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 (N, 8, 8) in [0, 255] and labels int32 (N,) of `split`."""
  idx = split_indices(split)
  images, labels = _load_all()
  return images[idx], labels[idx]


def captions(label: int) -> list[str]:
  return text_templates.digit_captions(label)


def qa_pairs(label: int) -> list[tuple[str, str]]:
  return text_templates.digit_qa(label)


def text_corpus() -> list[str]:
  """Every caption, question and answer the digits data can produce."""
  texts = []
  for d in range(NUM_CLASSES):
    texts += captions(d)
    for q, a in qa_pairs(d):
      texts += [q, a]
  return texts


def decode_record(record: dict[str, np.ndarray]) -> source_lib.Example:
  return {"image": record["image"], "label": int(record["label"]),
          "captions": ()}


def open_digits(split: str) -> source_lib.ExampleSource:
  """An `ExampleSource` of a digits split: text comes from the labels."""
  images, labels = load(split)
  records = [{"image": im, "label": l} for im, l in zip(images, labels)]
  return source_lib.ExampleSource(
      name="digits", records=records, decode=decode_record,
      num_classes=NUM_CLASSES, class_names=text_templates.DIGIT_WORDS,
      label_text="digit", has_captions=False, in_memory=(images, labels))
