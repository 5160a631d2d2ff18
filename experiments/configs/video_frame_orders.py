"""Video ablation "image orders frame by frame": a video_digits run with the four image scan
orders only (no time-major orders, ``model.time_orders=False``): each layer scans the clip frame
after frame, so a pixel's neighbours in time are a whole frame of tokens apart.

It keeps a 2x2 grid of tokens per frame (tubelets of 8x8 pixels over 2 frames, 32 latent
channels, 1500 steps): on ``video_digits``'s whole-frame tokens every order runs along time, and
the two schedules would be the same. Everything else, the sampler included, is
``video_digits``'s."""
from experiments.configs import video_digits


def get_config():
  c = video_digits.get_config()
  c.total_steps = 1500
  c.model.update(dict(patch_size=8, time_orders=False))
  return c
