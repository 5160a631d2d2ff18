"""``bench mfu``: the digits train step's achieved FLOP/s against a float32 matmul peak measured
in the same run; ``train_step_flops`` is the analytic model-FLOP count (``bench model`` reports
it too)."""
from __future__ import annotations

from absl import flags
import jax
import jax.numpy as jnp

from experiments.benchmarks.common import machine, print_markdown, time_fn, undonated_train_step

FLAGS = flags.FLAGS


def train_step_flops(mc, batch: int) -> float:
  """Analytic matmul FLOPs of one train step (forward + backward = 3x forward; remat's
  recomputation not counted: this is model FLOPs, the MFU convention)."""
  layout = mc.layout()
  L = layout.length
  d = mc.d_model
  per_token = 0.0
  if mc.backbone == "mamba2":
    d_inner = mc.expand * d
    h = d_inner // mc.headdim
    g, n, p = mc.ngroups, mc.d_state, mc.headdim
    proj_out = 2 * d_inner + 2 * g * n + h
    q = min(mc.chunk_size, L)
    per_token += 2 * d * proj_out + 2 * d_inner * d            # in_proj, out_proj
    per_token += 2 * q * n * g + 2 * q * p * h                  # C.B^T (per group), y_diag
    per_token += 2 * 2 * p * n * h                              # chunk states, state->output
  else:
    per_token += 2 * d * 3 * d + 2 * d * d + 2 * 2 * L * d      # qkv, out, scores, AV
  if mc.mlp_ratio > 0:
    per_token += 3 * 2 * d * int(mc.mlp_ratio * d)
  denoiser = mc.n_layers * per_token * L
  heads = 2 * d * mc.latent_dim * layout.n_image + 2 * d * (mc.vocab_size + 1) * mc.max_text_len
  vae_per_token = 2 * mc.vae_depth * 2 * (2 * mc.vae_width * 2 * mc.vae_width)  # enc + dec MLPs
  vae = vae_per_token * (layout.n_image + mc.max_text_len) * 2   # text encoded twice
  return 3.0 * batch * (denoiser + heads + vae)


def matmul_peak_flops(n: int = 2048) -> float:
  """Measured float32 matmul throughput of this machine (FLOP/s)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  return 2 * n**3 / time_fn(f, a, warmup=2, repeats=5)


def bench_mfu():
  """Achieved FLOP/s of the digits train step against this machine's measured matmul peak."""
  from experiments import configs
  peak = matmul_peak_flops()
  c = configs.load("digits")
  tr, step, state = undonated_train_step(c)
  with tr.mesh_context():
    seconds = time_fn(step, state, warmup=FLAGS.warmup, repeats=FLAGS.repeats)
  flops = train_step_flops(tr.model_cfg, c.batch_size)
  print(f"\nMFU of the digits train step (batch {c.batch_size}); {machine()}")
  print_markdown(["step ms", "model GFLOP/step", "achieved GFLOP/s", "matmul peak GFLOP/s", "MFU"],
                 [[f"{seconds * 1e3:.0f}", f"{flops / 1e9:.2f}", f"{flops / seconds / 1e9:.1f}",
                   f"{peak / 1e9:.1f}", f"{flops / seconds / peak:.1%}"]])
