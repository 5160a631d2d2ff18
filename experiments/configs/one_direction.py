"""Ablation "1 scan direction": every layer scans row-major / forward; otherwise the digits run."""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.model.directions = 1
  return c
