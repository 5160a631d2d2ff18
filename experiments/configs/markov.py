"""Ablation "Markov chain": D3PM absorbing chain for text, DDPM sampling for images."""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.loss.objective = "markov"
  c.sample.steps = 100   # DDPM ancestral sampling needs many more steps than DPM-Solver
  return c
