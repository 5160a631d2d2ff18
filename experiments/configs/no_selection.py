"""Ablation "w/o selection": dt, B, C input-independent (an LTI SSM); otherwise the digits run."""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.model.selective = False
  return c
