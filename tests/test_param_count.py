"""Parameter counts: equal to a real init, rows add up, per-block counts match hand formulas, and
the paper-scale (7B) model is counted without allocating it."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.models.mdm import MDM, MDMConfig
from mdm_jax.models.param_count import count_params, format_counts
from tiny_mdm import FAST_COMPILE, abstract_inputs, tiny_config



def block_params(cfg: MDMConfig) -> int:
  """One denoiser block, from the adaLN / Mamba-2 / attention / SwiGLU definitions, by hand."""
  d = cfg.d_model
  n_mod = 6 if cfg.mlp_ratio > 0 else 3  # adaLN-Zero shift, scale, gate per sub-block
  n = d * n_mod * d + n_mod * d  # adaLN kernel + bias
  n += d  # pre-mixer RMSNorm scale
  if cfg.backbone == "transformer":
    n += 3 * d * d + d * d  # qkv, out (no biases)
  else:
    di, g, s = cfg.expand * d, cfg.ngroups, cfg.d_state
    h = di // cfg.headdim
    conv_ch = di + (2 * g * s if cfg.selective else 0)
    n += d * (2 * di + (2 * g * s + h if cfg.selective else 0))  # in_proj: z, xBC, dt
    n += cfg.d_conv * conv_ch + conv_ch  # depthwise conv kernel + bias
    n += 3 * h  # A_log, dt_bias, D
    n += 0 if cfg.selective else 2 * g * s  # learned B, C of the LTI ablation
    n += di  # gated RMSNorm scale
    n += di * d  # out_proj
  if cfg.mlp_ratio > 0:
    hidden = int(cfg.mlp_ratio * d)
    n += d + 3 * d * hidden  # norm, gate, up, down
  return n


def test_count_equals_a_real_init():
  cfg = tiny_config(n_layers=3)
  model = MDM(cfg)
  counts = count_params(model.init, *abstract_inputs(cfg))
  images = jnp.zeros((1, 8, 8, 1))
  ids = jnp.zeros((1, 8), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(
      jax.random.key(0, impl="unsafe_rbg"), images, ids))["params"]
  real = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  assert counts["total"] == real
  assert list(counts)[-1] == "total"
  assert sum(v for k, v in counts.items() if k != "total") == real
  for name in ("vae/encoder", "vae/decoder", "vae/token_embed", "denoiser/layers",
               "denoiser/eps_head", "denoiser/score_head"):
    assert name in counts, name
  real_vae = sum(int(np.size(x)) for x in jax.tree.leaves(params["vae"]))
  assert count_params(model.init, *abstract_inputs(cfg), depth=1) == {
      "vae": real_vae, "denoiser": real - real_vae, "total": real}
  table = format_counts(counts)
  assert len(table.splitlines()) == len(counts) and "total" in table.splitlines()[-1]


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(mlp_ratio=2.0, ngroups=2),
    dict(selective=False),
    dict(backbone="transformer", mlp_ratio=1.5),
], ids=["mamba2", "mamba2-mlp-2groups", "lti", "transformer-mlp"])
def test_rows_match_hand_formulas(overrides):
  cfg = tiny_config(**{"n_layers": 3, **overrides})
  counts = count_params(MDM(cfg).init, *abstract_inputs(cfg))
  d, ld, v = cfg.d_model, cfg.latent_dim, cfg.vocab_size
  assert counts["denoiser/layers"] == cfg.n_layers * block_params(cfg)
  assert counts["denoiser/eps_head"] == d * ld + ld
  assert counts["denoiser/score_head"] == d * (v + 1) + (v + 1)  # vocab + [MASK]
  assert counts["denoiser/class_embed"] == (cfg.num_classes + 1) * d  # + null class
  assert counts["vae/token_embed"] == (v + 1) * cfg.vae_width


def test_paper_scale_model_is_counted_without_allocating():
  """The 49-block, d_model 2048 model of the imagenet256 config (billions of parameters, tens
  of GB in float32) is counted from shapes alone: device memory does not grow."""
  cfg = MDMConfig(image_size=256, channels=3, patch_size=8, max_text_len=128, vocab_size=32000,
                  num_classes=1000, vae_width=1024, vae_depth=4, latent_dim=16, d_model=2048,
                  n_layers=49, mlp_ratio=9.0, n_pad_tokens=4, row_end_tokens=True, d_state=128,
                  expand=2, headdim=64, ngroups=8, chunk_size=128, dtype="bfloat16")
  before = sum(x.nbytes for x in jax.live_arrays())
  counts = count_params(MDM(cfg).init, *abstract_inputs(cfg))
  after = sum(x.nbytes for x in jax.live_arrays())
  assert after - before < 1 << 20
  assert counts["denoiser/layers"] == 49 * block_params(cfg)
  assert counts["total"] > 5e9
