"""CIFAR-10 from tensorflow-datasets (array_record, `--config.data.data_dir=DIR`)."""
from experiments.configs import mnist


def get_config():
  c = mnist.get_config()
  c.data.name = "cifar10"
  c.data.channels = 3
  c.model.patch_size = 2
  c.model.update(dict(d_model=512, n_layers=12, latent_dim=8, vae_width=512, mlp_ratio=2.0))
  c.loss.task_weights = (1.0, 1.0, 1.0, 0.0, 1.0, 0.5)   # no VQA pairs for CIFAR-10
  c.total_steps = 200_000
  # 16 images per chip (peak 8.6 GiB). The TPU compiler refuses v5e-1 (HBM); v5e-4 fits at a
  # peak of 15.5 of 16 GiB, too close to the HBM to leave room for the runtime's own reservations.
  c.topology = "v5e-8"
  return c
