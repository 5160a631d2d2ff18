"""The bundled default dataset: scikit-learn's 8x8 handwritten digits.

1797 grey 8x8 images (values 0..16, ink high) ship inside scikit-learn, so the
default run needs no download. A fixed stratified split gives 1500 training and
297 test images. Text comes from the label: caption templates and VQA pairs
(`data.text_templates`).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from data import digits_split
from data import source as source_lib
from data import text_templates

NUM_CLASSES = 10
NUM_TRAIN = 1500
NUM_TEST = 297
SPLITS = ("train", "test")


@functools.cache
def _split_indices() -> dict[str, np.ndarray]:
  # scikit-learn's stratified split (seed 0), written out in data/digits_split.py.
  test = np.asarray(digits_split.TEST_INDICES, np.int64)
  train = np.setdiff1d(np.arange(NUM_TRAIN + NUM_TEST), test)
  return {"train": train, "test": test}


def split_indices(split: str) -> np.ndarray:
  """Indices into `load_digits()` of `split` ('train' or 'test'), sorted."""
  if split not in SPLITS:
    raise ValueError(f"Unknown digits split {split!r}; use one of {SPLITS}.")
  return _split_indices()[split].copy()


def _sklearn_digits_csv() -> str:
  """The path of the CSV file that ``sklearn.datasets.load_digits`` reads (64 pixel values and
  the label per row), found without importing scikit-learn: its datasets package takes about a
  second to import, in every process that reads the digits."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("the bundled digits ship inside scikit-learn: pip install scikit-learn")
  return os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")


@functools.cache
def _load_all() -> tuple[np.ndarray, np.ndarray]:
  path = _sklearn_digits_csv()
  if os.path.exists(path):   # read as load_digits reads it
    data = np.loadtxt(path, delimiter=",")
    pixels, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
  else:                      # a scikit-learn that keeps the file elsewhere
    from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
    d = sk_datasets.load_digits()
    pixels, target = d.images, d.target
  # 0..16 ink intensity -> 0..255, ink bright as in MNIST.
  images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
  return images, target.astype(np.int32)


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
