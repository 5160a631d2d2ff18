"""The Mamba-2 block: recurrent step mode, init ranges, causal conv, gated norm, axis names."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.models import mamba2 as mamba2_module
from mdm_jax.models.mamba2 import Mamba2, causal_depthwise_conv

D_MODEL = 32


def make_block(**kw):
  cfg = dict(d_model=D_MODEL, d_state=8, headdim=16, expand=2, ngroups=2, chunk_size=8)
  cfg.update(kw)
  return Mamba2(**cfg)


@pytest.mark.parametrize("selective", [True, False])
def test_step_mode_equals_sequence_mode(selective):
  block = make_block(selective=selective)
  u = jax.random.normal(jax.random.PRNGKey(0), (2, 21, D_MODEL))
  params = block.init(jax.random.PRNGKey(1), u)
  y_seq = block.apply(params, u)

  def body(state, u_t):
    y_t, state = block.apply(params, u_t, state, method=Mamba2.step)
    return state, y_t

  state0 = block.apply(params, 2, method=Mamba2.init_state)
  _, y_steps = jax.lax.scan(body, state0, jnp.swapaxes(u, 0, 1))
  np.testing.assert_allclose(np.swapaxes(y_steps, 0, 1), y_seq, rtol=2e-4, atol=2e-5)


def test_chunked_and_sequential_ssd_give_same_block_output():
  u = jax.random.normal(jax.random.PRNGKey(0), (1, 37, D_MODEL))
  params = make_block().init(jax.random.PRNGKey(1), u)
  y_xla = make_block(ssd_impl="xla").apply(params, u)
  y_scan = make_block(ssd_impl="scan").apply(params, u)
  np.testing.assert_allclose(y_xla, y_scan, rtol=1e-4, atol=1e-5)


def test_initialisation_ranges():
  block = make_block(expand=4, headdim=8)  # 16 heads: enough draws to see the ranges
  params = nn.meta.unbox(block.init(jax.random.PRNGKey(2), jnp.zeros((1, 4, D_MODEL))))["params"]
  A = -np.exp(np.asarray(params["A_log"]))
  assert np.all(A <= -1.0) and np.all(A >= -16.0)
  dt = np.log1p(np.exp(np.asarray(params["dt_bias"])))  # softplus
  assert np.all(dt >= 1e-3 * (1 - 1e-4)) and np.all(dt <= 0.1 * (1 + 1e-4))
  np.testing.assert_array_equal(params["D"], 1.0)
  for leaf in jax.tree_util.tree_leaves(params):
    assert leaf.dtype == jnp.float32


def test_every_parameter_has_logical_axis_names():
  for selective in (True, False):
    variables = make_block(selective=selective).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4, D_MODEL)))
    leaves = jax.tree_util.tree_leaves(
        variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), leaf
      assert len(leaf.names) == leaf.value.ndim


def test_causal_conv_matches_numpy_convolution():
  x = np.random.RandomState(0).randn(2, 11, 3).astype(np.float32)
  w = np.random.RandomState(1).randn(4, 3).astype(np.float32)
  bias = np.random.RandomState(2).randn(3).astype(np.float32)
  y = causal_depthwise_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias))
  for b in range(2):
    for c in range(3):
      # y_t = sum_j w[j] x_{t-3+j}: full convolution with the flipped kernel, first 11 outputs.
      ref = np.convolve(x[b, :, c], w[::-1, c])[:11] + bias[c]
      np.testing.assert_allclose(y[b, :, c], ref, rtol=1e-5, atol=1e-5)


def test_block_is_causal():
  block = make_block()
  u = jax.random.normal(jax.random.PRNGKey(0), (1, 16, D_MODEL))
  params = block.init(jax.random.PRNGKey(1), u)
  jac = jax.jacrev(lambda u: block.apply(params, u)[0, 7].sum())(u)
  assert np.abs(np.asarray(jac[0, 8:])).max() == 0.0
  assert np.abs(np.asarray(jac[0, :8])).max() > 0.0


def test_gated_norm_matches_formula():
  block = make_block(ngroups=1)
  u = jax.random.normal(jax.random.PRNGKey(0), (1, 5, D_MODEL))
  params = block.init(jax.random.PRNGKey(1), u)
  y = np.random.RandomState(0).randn(1, 5, 64).astype(np.float32)
  z = np.random.RandomState(1).randn(1, 5, 64).astype(np.float32)
  out = block.apply(params, jnp.asarray(y), jnp.asarray(z),
                    method=lambda m, y, z: m.norm(y, z))
  h = y * z / (1 + np.exp(-z))
  ref = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_bf16_compute_keeps_float32_params_and_runs():
  block = make_block(dtype=jnp.bfloat16)
  u = jax.random.normal(jax.random.PRNGKey(0), (1, 9, D_MODEL))
  params = block.init(jax.random.PRNGKey(1), u)
  y = block.apply(params, u)
  assert y.dtype == jnp.bfloat16
  chex.assert_tree_all_finite(y)
  for leaf in jax.tree_util.tree_leaves(nn.meta.unbox(params)):
    assert leaf.dtype == jnp.float32


def test_block_on_8_devices_equals_one_device():
  """Batch sharded over (data, fsdp), parameters FSDP-sharded: same output as 1 device."""
  from mdm_jax.training import sharding
  from tiny_mdm import RULES

  assert jax.device_count() == 8
  block = make_block(d_model=64, headdim=16)
  u = jax.random.normal(jax.random.PRNGKey(0), (8, 24, 64))
  variables = block.init(jax.random.PRNGKey(1), u)
  y_one = jax.jit(block.apply)(variables, u)

  mesh = sharding.make_mesh(data=2, fsdp=4)
  shardings = sharding.param_shardings(variables, mesh, RULES)
  params = jax.device_put(nn.meta.unbox(variables), shardings)
  kernel = params["params"]["in_proj"]["kernel"]
  assert kernel.sharding.spec[0] == "fsdp"  # (embed, mlp): embed split 4 ways
  assert kernel.addressable_shards[0].data.shape[0] == 64 // 4
  u_sharded = jax.device_put(u, sharding.batch_sharding(mesh, RULES))
  with sharding.mesh_context(mesh, RULES):
    y_many = jax.jit(block.apply)(params, u_sharded)
  assert len(y_many.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(y_many), np.asarray(y_one), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("selective", [True, False])
def test_without_selection_dt_B_C_do_not_depend_on_the_input(selective, monkeypatch):
  seen, real_ssd = [], mamba2_module.ssd

  def spy(x, dt, A, B, C, **kw):  # the mixer's SSM inputs, recorded on the way in
    seen.append((np.asarray(dt), np.asarray(B), np.asarray(C)))
    return real_ssd(x, dt, A, B, C, **kw)

  block = make_block(selective=selective)
  u1 = jax.random.normal(jax.random.PRNGKey(1), (2, 12, D_MODEL))
  u2 = jax.random.normal(jax.random.PRNGKey(2), (2, 12, D_MODEL))
  variables = block.init(jax.random.PRNGKey(0), u1)
  monkeypatch.setattr(mamba2_module, "ssd", spy)
  block.apply(variables, u1)
  block.apply(variables, u2)
  (dt1, b1, c1), (dt2, b2, c2) = seen
  for a, b in ((dt1, dt2), (b1, b2), (c1, c2)):
    if selective:  # the selective SSM reads them off the input
      assert np.max(np.abs(a - b)) > 1e-3
    else:  # identical for two inputs, and at every batch row and position
      np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(a, np.broadcast_to(a[:1, :1], a.shape))
