"""The default run: the scikit-learn handwritten digits bundled with the install (8x8 grey).

Every task trains together (class-to-image, text-to-image, captioning, VQA, joint, text) with
captions and VQA pairs made from the labels through varied templates; a BPE tokenizer is trained
on the fly and saved in the workdir. Budgeted for a 2-core CPU: on one whose
`python -m experiments.bench ssd --impl=xla --lengths=16384` takes about 210 ms it finishes with
its samples in 3.5-4 minutes including compilation (docs/results.md has the measured runs and
their quality). Lists only what it changes from ``base``.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.total_steps = 1500
  c.batch_size = 32
  c.checkpoint_every = 400
  c.data.update(dict(name="digits", image_size=8, channels=1, max_text_len=12, vocab_size=256))
  # Four image tokens of 16 latent values each (patch 4 of the 8x8 digit): 22 tokens a sequence.
  # One SSD chunk holds them, and the 6 layers run unrolled (the same stacked parameters): on a
  # 2-core CPU the step is per-op overhead, not FLOPs (`python -m experiments.bench steps`).
  c.model.update(dict(patch_size=4, latent_dim=16, n_layers=6, d_state=16, headdim=64,
                      chunk_size=48, remat=False, scan_unroll=6))
  # The v target draws the digits from batch 32 where eps needs 64; its loss is about 4x eps's,
  # and at full weight it crowds out the text terms.
  # Task order: class2img, t2i, caption, vqa, joint, text. VQA has the most examples: its
  # yes/no answers are the slowest thing the run learns.
  c.loss.update(dict(task_weights=(0.5, 1.0, 1.0, 2.5, 0.25, 0.25), beta_kl=1e-3,
                     image_target="v", image_weight=0.25))
  # The v model needs no class guidance (FID 12-13; eps at guidance 3: 19-22).
  c.sample.update(dict(steps=50, guidance=1.0, caption_guidance=6.0))
  c.optim.update(dict(lr=2e-3, warmup_steps=100))
  return c
