"""TFDS datasets read through `tfds.data_source` (array_record, no TensorFlow).

The data must already be prepared in array_record format, e.g.
`tfds build mnist --data_dir=DIR --file_format=array_record` on a machine with
TensorFlow and the download; here it is only read. Supported:

  mnist          image (28, 28, 1), label  -> digit captions and VQA pairs
  cifar10        image (32, 32, 3), label  -> captions from the class names
  imagenet2012   image, label (synset ids, no words) -> no text
  coco_captions  image, captions (5 each)  -> one caption per example, picked
                 from the seed (each epoch picks again)

coco_captions' builder code imports TensorFlow, so when it cannot be built from
code the prepared files are read through tfds' read-only builder instead.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import numpy as np

from data import source as source_lib

# name -> how its label becomes text.
_LABEL_TEXT = {
    "mnist": "digit",
    "cifar10": "class_name",
    "imagenet2012": None,
    "coco_captions": None,
}
SUPPORTED = tuple(_LABEL_TEXT)
# tfds fills cifar10's label names from the download at build time; a builder
# made from code alone (or a mock) has only "0".."9", so keep the real ones.
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                  "frog", "horse", "ship", "truck")


def default_data_dir() -> str:
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  return os.path.expanduser(constants.DATA_DIR)


def _not_prepared(name: str, data_dir: str | None,
                  err: Exception) -> ValueError:
  shown = data_dir or default_data_dir()
  return ValueError(
      f"TFDS dataset {name!r} is not prepared as array_record in {shown} "
      f"(tfds said: {type(err).__name__}: {str(err).splitlines()[0][:300]}). "
      f"Prepare it where TensorFlow and the download are available with "
      f"`tfds build {name} --data_dir={shown} --file_format=array_record` and "
      f"pass that directory as data_dir (or set TFDS_DATA_DIR); nothing is "
      f"downloaded at run time.")


def _open(name: str, split: str, data_dir: str | None, skip_images: bool):
  """The tfds ArrayRecordDataSource of name/split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import read_only_builder  # pylint: disable=g-import-not-at-top
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_images else None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False, decoders=decoders)
  except ImportError as e:
    # The builder's code needs TensorFlow: read the prepared files instead.
    logging.info("tfds builder code for %s failed (%s); reading its files.",
                 name, e)
  except (tfds.core.registered.DatasetNotFoundError, NotImplementedError,
          AssertionError, FileNotFoundError) as e:
    raise _not_prepared(name, data_dir, e) from e
  try:
    builder = read_only_builder.builder_from_files(
        name, data_dir=data_dir or default_data_dir())
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _not_prepared(name, data_dir, e) from e
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}.")
  return builder.as_data_source(split=split, decoders=decoders)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_labelled(record: dict[str, Any]) -> source_lib.Example:
  image = record["image"]  # bytes when opened with skip_images
  return {"image": image if isinstance(image, bytes) else np.asarray(image),
          "label": int(record["label"]),
          "captions": ()}


def decode_coco(record: dict[str, Any]) -> source_lib.Example:
  texts = record["captions"]["text"]
  image = record["image"]  # bytes when opened with skip_images
  return {"image": image if isinstance(image, bytes) else np.asarray(image),
          "label": -1,
          "captions": tuple(_text(t).strip() for t in texts)}


def open_tfds(name: str, *, split: str, data_dir: str | None = None,
              skip_images: bool = False) -> source_lib.ExampleSource:
  """An `ExampleSource` over a prepared TFDS dataset split.

  skip_images=True leaves images encoded (bytes): for reading text only.
  """
  if name not in _LABEL_TEXT:
    raise ValueError(f"Unsupported TFDS dataset {name!r}; use one of "
                     f"{SUPPORTED}.")
  records = _open(name, split, data_dir, skip_images)
  if name == "coco_captions":
    return source_lib.ExampleSource(
        name=name, records=records, decode=decode_coco, num_classes=0,
        class_names=None, label_text=None, has_captions=True)
  label = records.dataset_info.features["label"]
  names = tuple(label.names) if label.names else None
  if name == "cifar10" and names == tuple(str(i) for i in range(10)):
    names = _CIFAR10_NAMES
  return source_lib.ExampleSource(
      name=name, records=records, decode=decode_labelled,
      num_classes=int(label.num_classes), class_names=names,
      label_text=_LABEL_TEXT[name], has_captions=False)

