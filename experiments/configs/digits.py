"""The default run: the scikit-learn handwritten digits bundled with the install (8x8 grey).

Every task trains together (class-to-image, text-to-image, captioning, VQA, joint, text) with
captions and VQA pairs made from the labels through varied templates; a BPE tokenizer is trained
on the fly and saved in the workdir. Budgeted for a 2-core CPU: on one whose
`python -m experiments.bench ssd --impl=xla --lengths=16384` takes 210-250 ms it finishes with
its samples in 11-13 minutes including compilation (docs/results.md has the measured runs and
their quality). Lists only what it changes from ``base``.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.total_steps = 1800
  c.batch_size = 64
  c.checkpoint_every = 400
  c.data.update(dict(name="digits", image_size=8, channels=1, max_text_len=12, vocab_size=256))
  # One SSD chunk holds the 34 tokens, and the 6 layers run unrolled (the same stacked
  # parameters): on a 2-core CPU a train step takes 4/5 of the time of 16-token chunks in a
  # rolled scan (`python -m experiments.bench steps`).
  c.model.update(dict(latent_dim=4, n_layers=6, d_state=16, headdim=64, chunk_size=48,
                      remat=False, scan_unroll=6))
  c.loss.update(dict(task_weights=(0.5, 1.5, 1.0, 1.5, 0.25, 0.25), beta_kl=1e-3))
  c.sample.update(dict(steps=50, guidance=3.0, caption_guidance=6.0))
  c.optim.update(dict(lr=2e-3, warmup_steps=100))
  return c
