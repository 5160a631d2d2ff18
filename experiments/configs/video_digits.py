"""The laptop video run: the digits network on the bundled moving digits (nothing downloaded).

Each clip is 8 frames of a 16x16 canvas with one bundled digit moving up, down, left or right
through the canvas's middle (`data.moving_digits`, its default path); the VAE cuts it into
tubelets of 8x8 pixels over 2 frames, a 2x2 token grid on 4 token frames (16 clip tokens, 128
values each, 32 latent channels). Every task of the table trains on clips in one mixture:
class-to-video, text-to-video, video captioning, video VQA, joint clip+caption and text;
prediction and interpolation sample as inpainting in time. The 6 blocks are one period of the
clip scan schedule (4 image orders over the frames, 2 time-major).

Budgeted at most twice the training time of the digits run, measured side by side: 8x8-pixel
tubelets make 1500 steps 1.75-1.8x the digits loop, where 4x4 ones (64 clip tokens) took 5.2x,
and on one of two seeds the run reads a clip's digit in that budget (docs/results.md, "The
budget against today's digits run, and 8x8-pixel tubelets"). Lists only what it changes from
``digits`` (whose v target, 1500 steps and unguided sampler it keeps): the clip data and
tubelets, and a task mixture that weights text-to-clip 1.5.
"""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.data.update(dict(name="moving_digits", image_size=16, max_text_len=16))
  c.model.update(dict(frames=8, tubelet=2, patch_size=8, latent_dim=32, chunk_size=32))
  # Task order: class2img, t2i, caption, vqa, joint, text (class2img and t2i are on clips).
  c.loss.task_weights = (0.5, 1.5, 1.0, 1.5, 0.25, 0.25)
  return c
