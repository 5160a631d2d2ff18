"""A tiny, fast variant of the digits run for tests and the CPU notebook check."""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.total_steps = 6
  c.batch_size = 16
  c.log_every = 2
  c.checkpoint_every = 3
  c.sample.steps = 3
  c.sample.num = 10
  c.model.update(dict(vae_width=32, vae_depth=1, d_model=32, n_layers=2, mlp_ratio=0.0,
                      d_state=8, headdim=16))
  c.optim.warmup_steps = 2
  return c
