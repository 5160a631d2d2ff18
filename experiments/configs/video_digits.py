"""The laptop video run: the digits network on the bundled moving digits (nothing downloaded).

Each clip is 8 frames of a 16x16 canvas with one bundled digit moving up, down, left or right
through the canvas's middle (`data.moving_digits`, its default path); the VAE cuts it into
tubelets of 4x4 pixels over 2 frames, a 4x4 token grid on 4 token frames (64 clip tokens, 32
values each, 8 latent channels). Every task of the
table trains on clips in one mixture: class-to-video, text-to-video, video captioning, video VQA,
joint clip+caption and text; prediction and interpolation sample as inpainting in time. The 6
blocks are one period of the clip scan schedule (4 image orders over the frames, 2 time-major).

Budgeted at most twice the training time of the digits run it was measured beside (16 image
tokens at batch 64; today's digits run takes about a third of that): docs/results.md has the
measured run and its quality. Lists only what it changes from ``digits``.
"""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.total_steps = 1800
  c.data.update(dict(name="moving_digits", image_size=16, max_text_len=16))
  c.model.update(dict(frames=8, tubelet=2, patch_size=4, latent_dim=8, chunk_size=32))
  # The measured video run's steps, image objective and task mixture, which the digits run has
  # since left: the eps target at full weight, sampled at guidance 3 (the v target meets no video
  # target either: docs/results.md, "The v target on clips"), text-to-clip weighted 1.5.
  c.loss.update(dict(image_target="eps", image_weight=1.0,
                     task_weights=(0.5, 1.5, 1.0, 1.5, 0.25, 0.25)))
  c.sample.guidance = 3.0
  return c
