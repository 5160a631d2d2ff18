r"""Converts a local image folder to array_record files for the pipeline.

  python -m data.prepare --src=IMAGES --out=PREPARED [--image_size=64] \
      [--channels=3] [--test_fraction=0.05]

Then train with the dataset name 'folder' and data_dir=PREPARED. The accepted
folder layouts are described in `data.folder`. Clips (captions.jsonl listing
animated images or folders of frames) for a video config:

  python -m data.prepare --src=CLIPS --out=PREPARED --frames=16 \
      [--frame_stride=2] [--image_size=256]
"""

from __future__ import annotations

import json

from absl import app
from absl import flags

from data import folder

_SRC = flags.DEFINE_string("src", None, "Folder of images to convert.")
_OUT = flags.DEFINE_string("out", None, "Output folder for the array_record "
                           "files and metadata.json.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "If set, centre-crop and resize images to this square "
    "size now (else the pipeline resizes at read time).")
_CHANNELS = flags.DEFINE_integer(
    "channels", 3, "1 (grey) or 3 (RGB); other images are converted.")
_TEST_FRACTION = flags.DEFINE_float(
    "test_fraction", 0.0, "Share of images put in a 'test' split.")
_FRAMES = flags.DEFINE_integer(
    "frames", None, "Clips: frames per clip (the video config's model.frames); "
    "unset for images.")
_FRAME_STRIDE = flags.DEFINE_integer(
    "frame_stride", 1, "Clips: keep every k-th frame of the centred window.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  stats = folder.prepare(_SRC.value, _OUT.value, image_size=_IMAGE_SIZE.value,
                         channels=_CHANNELS.value,
                         test_fraction=_TEST_FRACTION.value,
                         frames=_FRAMES.value, frame_stride=_FRAME_STRIDE.value)
  print(json.dumps(stats, indent=2))


if __name__ == "__main__":
  flags.mark_flags_as_required(["src", "out"])
  app.run(main)
