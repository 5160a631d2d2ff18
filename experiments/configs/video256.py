"""Text-to-video at pod scale: 16-frame 256x256 clips with captions, the 7B MDM of coco256.

The same network and tasks as coco256 (text-to-video, video captioning, joint video + caption
and text; no classes), on clips: 16 frames at 256x256 RGB, cut into tubelets of 2 frames x 8 x 8
pixels (384 values each, encoded to 16 latent channels: 24x, about what video VAEs compress),
so a clip is an 8 x 32 x 32 grid of 8192 visual tokens, time-major; with a row-end token after
each of its 256 token rows, the 128 text tokens and the prefix, the scan runs over 8584 tokens
(imagenet256: 1192), the linear-time scan's case. The clip orders (``scan_order``: the four
image orders over the whole clip and the two time-major ones) have period 6 over the 49 blocks.
7.16B parameters (7,158,416,497): coco256's 7,158,006,705 plus 409,792, the tubelet VAE's
first and last layers taking and giving 384 values instead of 192 and the per-frame position
table (8 x 2048); count them with ``python -m experiments.train --config=video256 --dry_run``.

Home slice v5p-128 (64 chips, fsdp 64): 4 clips per chip at global batch 256, a train-step
peak of 27.6 of 95 GiB per chip by the TPU compiler (docs/results.md, TPU compiler verdicts).

Data: a prepared clip folder (``data.name="folder"``). The pipeline reads tfds without
TensorFlow, and tfds' ``Video`` feature needs TensorFlow even to read prepared files, so tfds'
captioned video set (``webvid``, WebVid-10M's video-caption pairs) cannot be read here. Clips
with captions are prepared once with ``python -m data.prepare``, as an image folder is:
SRC/captions.jsonl lists {"file": ..., "caption": ...} per clip, a file being an animated GIF /
WebP / PNG or a folder of frame images (sorted by name; decode an mp4 to frames with ffmpeg
first, e.g. ``ffmpeg -i a.mp4 -vf fps=8 a/%04d.jpg``):

  python -m data.prepare --src=CLIPS --out=PREPARED --frames=16 --frame_stride=1 \\
      --image_size=256 --test_fraction=0.01
  python -m experiments.train --config=video256 --config.data.data_dir=PREPARED ...

``--frame_stride`` keeps every k-th frame of a centred window (clips too short are left out and
counted); the frames are centre-cropped and resized to 256x256 once, at preparation.
"""
from experiments.configs import coco256


def get_config():
  c = coco256.get_config()
  c.data.name = "folder"
  c.model.update(dict(frames=16, tubelet=2))
  c.sample.num = 16                   # a 4 x 4 grid of clips in each GIF
  c.sample_every = 5_000
  c.topology = "v5p-128"   # 64 chips (4x4x4), 4 clips per chip: compiled peak 27.6 of 95 GiB
  return c
