"""Ablation "SEDD's score form": the text head's log-scores are free per token (SEDD's
``raw - log(e^sigma - 1) - log V``) instead of a softmax over e^sigma - 1 (the default,
``model.text_score="conditional"``); otherwise the digits run. Same loss (score entropy)."""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.model.text_score = "sedd"
  return c
