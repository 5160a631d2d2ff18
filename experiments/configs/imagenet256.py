"""The paper's scale: ImageNet 256x256 class-to-image with the 7B MDM (49 blocks, d_model 2048).

Reaching 7B at width 2048 and 49 blocks needs ~143M parameters per block; a Mamba-2 mixer with
expand 2 has only ~29.5M (in_proj 2048 x 10304, out_proj 4096 x 2048) and the adaLN-Zero
modulation 25.2M (2048 x 6 x 2048), so every block also has a SwiGLU MLP of 6.75 x d_model =
13824 hidden units (84.9M). Total 7.09B, of which 6.84B in the 49 blocks (count it with
`python -m experiments.train --config=imagenet256 --dry_run`).

Images are cut into 8x8 patches (32x32 = 1024 image tokens, 16 latent channels each); the
text side is kept (128 tokens, 32K vocab) so the same checkpoint can be fine-tuned on
coco256 / instruct. ImageNet's labels are synset ids, no words: the run trains no tokenizer,
its text positions are absent (all [MASK]) in every example, and the text layers keep
`data.vocab_size` ids without being fed. Needs `tfds build imagenet2012
--file_format=array_record` (manual download) and `--config.data.data_dir`.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.update(dict(name="imagenet2012", image_size=256, channels=3, max_text_len=128,
                     vocab_size=32000, worker_count=16))
  c.model.update(dict(
      patch_size=8, num_classes=1000, vae_width=1024, vae_depth=4, latent_dim=16,
      d_model=2048, n_layers=49, mlp_ratio=6.75, n_pad_tokens=4, row_end_tokens=True,
      d_state=128, headdim=64, ngroups=8, chunk_size=128, dtype="bfloat16"))
  c.loss.update(dict(task_weights=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0),   # class-to-image only
                     beta_kl=1e-3))
  c.sample.update(dict(steps=25, guidance=1.5, num=64))
  c.total_steps = 400_000
  c.batch_size = 256
  c.log_every = 100
  c.sample_every = 10_000
  c.checkpoint_every = 2_000
  c.keep_checkpoints = 3
  c.optim.update(dict(lr=1e-4, warmup_steps=5_000, weight_decay=0.0, b2=0.95,
                      ema_decay=0.9999))
  c.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  c.topology = "v5p-128"   # 64 chips (4x4x4), 4 images per chip: the TPU compiler's peak 6.4 of 95 GiB
  return c
