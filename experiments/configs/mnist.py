"""MNIST from tensorflow-datasets (prepare it first: `tfds build mnist --data_dir=DIR
--file_format=array_record`, then `--config.data.data_dir=DIR`). 28x28 padded to 32x32; the
digits run's tasks, captions and sampler at a larger model."""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.update(dict(name="mnist", image_size=32, channels=1, max_text_len=12, vocab_size=256))
  c.model.update(dict(patch_size=4, d_model=256, n_layers=8, vae_width=256, d_state=16,
                      headdim=64, remat=False))
  c.loss.update(dict(task_weights=(1.0, 1.0, 1.0, 1.5, 0.25, 0.25), beta_kl=1e-3))
  c.sample.update(dict(steps=50, guidance=3.0, caption_guidance=3.0))
  c.total_steps = 50_000
  c.batch_size = 128
  c.sample_every = 5000
  c.checkpoint_every = 2000
  c.optim.update(dict(lr=1e-3, warmup_steps=1000))
  return c
