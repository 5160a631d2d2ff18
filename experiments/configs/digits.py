"""The default run: the scikit-learn handwritten digits bundled with the install (8x8 grey).

Every task trains together (class-to-image, text-to-image, captioning, VQA, joint, text) with
captions and VQA pairs made from the labels through varied templates; a BPE tokenizer is trained
on the fly and saved in the workdir. Budgeted for a 2-core CPU: finishes with its samples in
15 to 19 minutes including compilation, measured on different days (the README records the
measured run and its quality).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1800
  c.batch_size = 64                   # global
  c.log_every = 50
  c.sample_every = 0                  # 0: only at the end
  c.checkpoint_every = 400
  c.keep_checkpoints = 2

  c.data = ml_collections.ConfigDict(dict(
      name="digits", data_dir=ml_collections.FieldReference(None, field_type=str),
      image_size=8, channels=1, max_text_len=12, vocab_size=256, worker_count=0))

  c.model = ml_collections.ConfigDict(dict(
      image_size=8, channels=1, patch_size=2, max_text_len=12,
      vocab_size=256, num_classes=10,     # both reset from the data at run time
      vae_width=128, vae_depth=2, latent_dim=4,
      backbone="mamba2", d_model=128, n_layers=6, mlp_ratio=0.0, n_pad_tokens=2,
      row_end_tokens=False, directions=4, text_score="conditional", text_pool_cond=True,
      d_state=16, d_conv=4, expand=2, headdim=64, ngroups=1, selective=True,
      chunk_size=16, ssd_impl="auto", pallas_target="auto", attn_heads=4,
      dtype="float32", remat=False, scan_layers=True))

  c.loss = ml_collections.ConfigDict(dict(
      task_weights=(1.0, 1.0, 1.0, 1.5, 0.25, 0.25),
      objective="score_entropy", image_target="eps", beta_kl=1e-3, cond_drop=0.1,
      grad_to_encoder=False, t_min=1e-3, image_weight=1.0, text_weight=1.0,
      schedule="linear", noise_eps=1e-3))

  c.sample = ml_collections.ConfigDict(dict(
      steps=50, guidance=3.0, image_solver="auto", text_method="auto", t_end=1e-3,
      text_temperature=1.0, joint_order="text_first",
      num=40))

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, warmup_steps=100, end_lr_factor=0.05, weight_decay=0.01, b1=0.9, b2=0.99,
      grad_clip=1.0, grad_accum_steps=1, ema_decay=0.999))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c
