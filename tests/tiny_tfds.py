"""A tiny coco_captions prepared as array_record, written by a builder with tfds' own name,
config, version and features (tfds' coco_captions builder code needs TensorFlow, so
`tfds.testing.mock_data` cannot make it here): 6 train and 2 val images, image i grey level
30 * i, with 1 + i % 3 captions "caption {i} number {j}"."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds


def _png(array):
  """PNG bytes (lossless, so the test can read pixel values back)."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  buf.seek(0)
  return buf


class TinyCocoCaptions(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
  """Same name, config, version and features as tfds' coco_captions."""
  name = "coco_captions"
  VERSION = tfds.core.Version("1.1.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "captions": tfds.features.Sequence({"text": np.str_,
                                                "id": np.int64}),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(6),
            "val": self._generate_examples(2)}

  def _generate_examples(self, n):
    for i in range(n):
      image = np.full((10 + i, 14, 3), 30 * i, np.uint8)
      yield i, {"image": _png(image), "image/filename": f"{i}.jpg",
                "image/id": i,
                "captions": [{"text": f"caption {i} number {j}", "id": j}
                             for j in range(1 + i % 3)]}


def prepare_tiny_coco(data_dir: str) -> str:
  """Writes the tiny coco_captions under `data_dir` (a tfds data_dir); returns it."""
  TinyCocoCaptions(data_dir=data_dir,
                   file_format="array_record").download_and_prepare()
  return data_dir
