"""COCO captions 256x256: text-to-image and captioning (plus joint and text), 7B model.

Needs `tfds build coco_captions --file_format=array_record` and `--config.data.data_dir`.
"""
from experiments.configs import imagenet256


def get_config():
  c = imagenet256.get_config()
  c.data.name = "coco_captions"
  c.model.num_classes = 1          # no classes: only the null class is used
  c.loss.task_weights = (0.0, 1.0, 1.0, 0.0, 0.5, 0.25)
  c.sample.guidance = 3.0
  c.sample.caption_guidance = 3.0
  return c
