"""Video ablation "image orders frame by frame": the video_digits run with the four image scan
orders only (no time-major orders, ``model.time_orders=False``): each layer scans the clip frame
after frame, so a pixel's neighbours in time are a whole frame of tokens apart."""
from experiments.configs import video_digits


def get_config():
  c = video_digits.get_config()
  c.model.time_orders = False
  return c
