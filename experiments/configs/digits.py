"""The default run: the scikit-learn handwritten digits bundled with the install (8x8 grey).

Every task trains together (class-to-image, text-to-image, captioning, VQA, joint, text) with
captions and VQA pairs made from the labels through varied templates; a BPE tokenizer is trained
on the fly and saved in the workdir. Budgeted for a 2-core CPU: the step's cost grows with the
batch and the depth (per-op overhead does not dominate at 34 tokens), so the budget is 900 steps
of 4 blocks, one block per image scan order (docs/results.md, "The default digits run", has the
measured runs, their quality and the machine's speed reference). Lists only what it changes
from ``base``.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.total_steps = 900
  c.batch_size = 64
  c.checkpoint_every = 300
  c.data.update(dict(name="digits", image_size=8, channels=1, max_text_len=12, vocab_size=256))
  c.model.update(dict(latent_dim=4, n_layers=4, d_state=16, headdim=64, chunk_size=48,
                      remat=False))
  # chunk_size 48 holds the whole 34-token sequence in one SSD chunk (exact at any chunk size):
  # no recurrence between chunks, ~10% off the step against 16.
  c.loss.update(dict(task_weights=(0.5, 1.5, 1.0, 1.5, 0.25, 0.25), beta_kl=1e-3))
  c.sample.update(dict(steps=50, guidance=3.0, caption_guidance=6.0))
  c.optim.update(dict(lr=2e-3, warmup_steps=50))
  return c
