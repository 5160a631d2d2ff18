"""A tiny video run for tests: the `tiny` network on the bundled moving digits, 4-frame clips on
a 16x16 canvas cut into 4x4 patches (a 4x4 token grid a frame, 64 clip tokens), every task of
the table trained on clips (class-to-video, text-to-video, captioning, VQA, joint, text).

Not a quality run: it checks that the same network trains, checkpoints, resumes and samples on
video (``python -m experiments.train --config=video_tiny --workdir=W``).
"""
from experiments.configs import tiny


def get_config():
  c = tiny.get_config()
  c.batch_size = 8
  c.data.update(dict(name="moving_digits", image_size=16, max_text_len=16))
  c.model.update(dict(frames=4, patch_size=4, chunk_size=16))
  c.sample.num = 8
  return c
