"""MNIST from tensorflow-datasets (prepare it first: `tfds build mnist --data_dir=DIR
--file_format=array_record`, then `--config.data.data_dir=DIR`). 28x28 padded to 32x32."""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.data.name = "mnist"
  c.data.image_size = c.model.image_size = 32
  c.model.patch_size = 4
  c.model.update(dict(d_model=256, n_layers=8, latent_dim=8, vae_width=256, chunk_size=64))
  c.total_steps = 50_000
  c.batch_size = 128
  c.sample_every = 5000
  c.checkpoint_every = 2000
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 1000
  return c
