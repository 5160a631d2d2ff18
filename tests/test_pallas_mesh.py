"""The Pallas SSD kernel under a device mesh (``mdm_jax.ssm.kernel``: ``shard_map`` over batch and
heads), on the 8 fake CPU devices with the kernel in interpret mode, and lowered for TPU (the
Mosaic kernels' per-device operand shapes).

Oracles are 1-device results that share no partitioning code: ``ssd_scan`` (the sequential
recurrence) for the SSD itself and the whole model with ``ssd_impl="xla"`` for MDM. Relative
error = max|a - b| / max|b|.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mdm_jax.losses import LossConfig, mdm_loss
from mdm_jax.models.mdm import MDM
from mdm_jax.ssm.ssd import ssd, ssd_scan
from mdm_jax.training import sharding
from tiny_mdm import (FAST_COMPILE, RULES, TEXT_LEN, VOCAB, key, randomize_zero_kernels,
                      tiny_config)

_NAMES = ("x", "dt", "A", "B", "C", "initial_state")


def _rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _ssd_inputs(seed, b, l, h, p, g, n):
  rng = np.random.default_rng(seed)
  normal = lambda *s: rng.standard_normal(s).astype(np.float32)
  args = (normal(b, l, h, p), np.logaddexp(0.0, normal(b, l, h) - 1.0), -np.exp(0.5 * normal(h)),
          normal(b, l, g, n), normal(b, l, g, n), normal(b, h, p, n))
  cotangents = (normal(b, l, h, p), normal(b, h, p, n))
  return [jnp.asarray(a) for a in args], [jnp.asarray(c) for c in cotangents]


def _outputs_and_grads(fn, args, cotangents, mesh=None):
  def run(*args):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(tuple(cotangents))
  if mesh is None:
    return jax.jit(run)(*args)
  with sharding.mesh_context(mesh, RULES):
    return jax.jit(run)(*args)


# (mesh (data, fsdp, tensor), b, h, g): which branch of the group handling each case takes.
@pytest.mark.parametrize("mesh_shape, b, h, g", [
    ((2, 2, 2), 4, 4, 2),   # g divisible by the 2 head shards: B, C split over tensor
    ((2, 2, 2), 2, 4, 1),   # one group for 2 shards: replicated, each shard slices its group;
                            # b = 2 on (data, fsdp) = 4: batch only over data, fsdp replicated
    ((1, 2, 4), 2, 8, 2),   # 2 groups for 4 shards: shards 0, 1 slice group 0; 2, 3 group 1
    ((1, 2, 4), 2, 12, 3),  # 3 heads a shard, 4 heads a group: shards straddle groups
    ((2, 2, 2), 3, 3, 1),   # nothing divides: replicated inside the shard_map (a bare Mosaic
                            # call under a mesh is refused by the TPU compiler)
])
def test_sharded_kernel_matches_scan_oracle(mesh_shape, b, h, g):
  mesh = sharding.make_mesh(*mesh_shape)
  args, cotangents = _ssd_inputs(0, b=b, l=19, h=h, p=8, g=g, n=8)

  def kernel(x, dt, A, B, C, h0):
    return ssd(x, dt, A, B, C, chunk_size=8, initial_state=h0, impl="pallas",
               pallas_target="interpret")

  with sharding.mesh_context(mesh, RULES):
    jaxpr = str(jax.make_jaxpr(kernel)(*args))
  assert "shard_map" in jaxpr
  (y, h_last), grads = _outputs_and_grads(kernel, args, cotangents, mesh)
  (y_ref, h_ref), grads_ref = _outputs_and_grads(ssd_scan, args, cotangents)
  errors = {"y": _rel_err(y, y_ref), "h_last": _rel_err(h_last, h_ref)}
  for name, arg, grad, grad_ref in zip(_NAMES, args, grads, grads_ref):
    assert grad.shape == arg.shape, name
    errors["d" + name] = _rel_err(grad, grad_ref)
  bad = {k: v for k, v in errors.items() if not v <= 1e-4}
  assert not bad, f"relative errors above 1e-4: {bad}"


def test_kernel_sees_per_shard_shapes(monkeypatch):
  """Inside the shard_map, the kernel's operands are one shard's batch rows and heads."""
  import pallas_kernels.ssd as pallas_ssd

  mesh = sharding.make_mesh(2, 2, 2)
  args, _ = _ssd_inputs(0, b=8, l=8, h=4, p=8, g=2, n=8)
  seen = []
  real = pallas_ssd.ssd

  def spy(x, dt, A, B, C, **kw):
    seen.append((x.shape, B.shape))
    return real(x, dt, A, B, C, **kw)

  monkeypatch.setattr(pallas_ssd, "ssd", spy)
  with sharding.mesh_context(mesh, RULES):
    jax.eval_shape(lambda *a: ssd(*a[:5], chunk_size=8, impl="pallas"), *args)
  jax.eval_shape(lambda *a: ssd(*a[:5], chunk_size=8, impl="pallas"), *args)  # no mesh
  assert seen == [((2, 8, 2, 8), (2, 8, 1, 8)), ((8, 8, 4, 8), (8, 8, 2, 8))]


def _mosaic_operands(stablehlo: str) -> dict:
  """{kernel name: [operand shape, ...]} of the Mosaic ``tpu_custom_call``s in lowered text."""
  calls = {}
  for line in stablehlo.splitlines():
    if "@tpu_custom_call" in line:
      name = re.search(r'kernel_name = "([^"]+)"', line).group(1)
      types = re.search(r"\} : \((.*?)\) ->", line).group(1)
      calls[name] = [tuple(int(d) for d in t.split("x")[:-1])
                     for t in re.findall(r"tensor<([^>]*)>", types)]
  return calls


def test_tpu_lowering_per_device_shapes():
  """Lowered for TPU under a data=2 x fsdp=2 x tensor=2 mesh, each Mosaic kernel gets one
  device's batch rows and heads, x transposed to (batch, heads, head dim, length) with the head
  dim 64 unpadded (not 128 lanes) and the length 200 unpadded: two 128-token chunks, the
  second overhanging it (only dt's per-step rows are padded to whole chunks)."""
  mesh = sharding.make_mesh(2, 2, 2)
  b, l, h, p, g, n = 8, 200, 4, 64, 2, 128
  spec = jax.ShapeDtypeStruct
  args = (spec((b, l, h, p), jnp.bfloat16), spec((b, l, h), jnp.float32),
          spec((h,), jnp.float32), spec((b, l, g, n), jnp.bfloat16),
          spec((b, l, g, n), jnp.bfloat16), spec((b, l, h, p), jnp.bfloat16))

  def fwd_bwd(x, dt, A, B, C, dy):
    y, vjp = jax.vjp(lambda *a: ssd(*a, chunk_size=128, impl="pallas", pallas_target="tpu")[0],
                     x, dt, A, B, C)
    return y, vjp(dy)

  with sharding.mesh_context(mesh, RULES):
    text = jax.jit(fwd_bwd).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
  calls = _mosaic_operands(text)
  # Per device: batch 8 / (data x fsdp) = 2, heads 4 / tensor = 2, groups 2 / tensor = 1.
  x, rows, groups = (2, 2, 64, 200), (2, 2, 2, 1, 128), (2, 1, 200, 128)
  states = (2, 1, 2, 64, 128)  # h0, dh_last: per group, its 2 heads
  assert calls["ssd_fwd_tpu"] == [x, rows, rows, groups, groups, states]
  assert calls["ssd_bwd_tpu"] == [x, rows, rows, groups, groups, (2, 2, 2, 64, 128), x, states]


# ----------------------------------------------------------------------------- the model
BATCH = 8


def _batch():
  rs = np.random.RandomState(0)
  return dict(image=rs.uniform(-1, 1, (BATCH, 8, 8, 1)).astype(np.float32),
              label=(np.arange(BATCH) % 10).astype(np.int32),
              caption=rs.randint(0, VOCAB, (BATCH, TEXT_LEN)).astype(np.int32),
              vqa=rs.randint(0, VOCAB, (BATCH, TEXT_LEN)).astype(np.int32),
              vqa_prompt_len=np.full((BATCH,), 3, np.int32))


def _loss_and_grad(model, params, stats, batch):
  lc = LossConfig(cond_drop=0.0)
  fn = lambda p: model.apply({"params": p, "latent_stats": stats}, batch, key(3), lc,
                             method=mdm_loss)[0]
  return jax.jit(jax.value_and_grad(fn), compiler_options=FAST_COMPILE)(params)


def test_mdm_with_sharded_kernel_equals_one_device_xla():
  """Scanned, rematerialised layers; mesh data=2 x fsdp=2 x tensor=2; params FSDP/TP-sharded."""
  # One group for 4 heads on 2 head shards: B and C replicated over tensor, each shard slices
  # its group (the kernel-level test covers the other group layouts).
  cfg_kernel = tiny_config(ssd_impl="pallas", pallas_target="interpret", scan_layers=True,
                           remat=True, ngroups=1)
  cfg_xla = tiny_config(ssd_impl="xla", scan_layers=True, remat=True, ngroups=1)
  batch = _batch()
  variables = nn.meta.unbox(jax.jit(MDM(cfg_xla).init, compiler_options=FAST_COMPILE)(
      key(0), batch["image"][:1], batch["caption"][:1]))
  params = randomize_zero_kernels(variables["params"])
  stats = variables["latent_stats"]
  loss_ref, grads_ref = _loss_and_grad(MDM(cfg_xla), params, stats, batch)

  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  boxed = jax.eval_shape(MDM(cfg_kernel).init, key(0), batch["image"][:1],
                         batch["caption"][:1])
  param_shardings = sharding.param_shardings(boxed, mesh, RULES)["params"]
  sharded_params = jax.device_put(params, param_shardings)
  # The mixer's head parameters really are split over tensor.
  a_log = sharded_params["denoiser"]["layers"]["mixer"]["A_log"]
  assert a_log.sharding.spec == P(None, "tensor"), a_log.sharding.spec
  batch_sharded = sharding.shard_batch(batch, mesh, RULES)
  stats = jax.device_put(stats, NamedSharding(mesh, P()))
  with sharding.mesh_context(mesh, RULES):
    loss, grads = _loss_and_grad(MDM(cfg_kernel), sharded_params, stats, batch_sharded)
    jaxpr = str(jax.make_jaxpr(lambda p: MDM(cfg_kernel).apply(
        {"params": p, "latent_stats": stats}, batch_sharded, key(3), LossConfig(),
        method=mdm_loss))(sharded_params))
  assert "shard_map" in jaxpr and "pallas_call" in jaxpr

  assert np.isfinite(float(loss_ref))
  assert abs(float(loss) - float(loss_ref)) <= 1e-5 * max(1.0, abs(float(loss_ref)))
  flat_ref = jax.tree_util.tree_flatten_with_path(grads_ref)[0]
  flat = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
  errors = {}
  for path, g_ref in flat_ref:
    g = flat[path]
    assert g.shape == g_ref.shape
    scale = float(np.abs(np.asarray(g_ref)).max())
    errors[jax.tree_util.keystr(path)] = (float(np.abs(np.asarray(g) - np.asarray(g_ref)).max())
                                          / max(scale, 1e-30), scale)
  # The SSD's own parameters got a real gradient (the kernel's backward ran).
  assert errors["['denoiser']['layers']['mixer']['A_log']"][1] > 0
  bad = {k: v for k, v in errors.items() if not v[0] <= 1e-4}
  assert not bad, f"gradients off by more than 1e-4 relative: {bad}"
