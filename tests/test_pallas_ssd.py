"""pallas_kernels.ssd (interpret mode on CPU) against the sequential-scan oracle ``ssd_scan``.

Forward outputs (y, h_last) and the gradients of every input under a random cotangent on both
outputs are compared with ``mdm_jax.ssm.ssd.ssd_scan``, a one-token-per-step ``lax.scan``
that shares no code with the chunked kernels. Relative error = max|a - b| / max|b|.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mdm_jax.ssm.ssd import ssd_scan
from pallas_kernels.ssd import ssd

_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 1e-2}
_NAMES = ("x", "dt", "A", "B", "C", "initial_state")


def _inputs(seed, *, b, l, h, p, g, n, dtype, with_init):
  """Random SSD inputs (dt > 0, A < 0) and random cotangents for y and h_last.

  Drawn with numpy: eager jax.random calls would each compile a small program.
  """
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  args = [
      jnp.asarray(normal(b, l, h, p), dtype),
      jnp.asarray(np.logaddexp(0.0, normal(b, l, h) - 1.0), dtype),  # softplus
      jnp.asarray(-np.exp(0.5 * normal(h))),
      jnp.asarray(normal(b, l, g, n), dtype),
      jnp.asarray(normal(b, l, g, n), dtype),
  ]
  if with_init:
    args.append(jnp.asarray(normal(b, h, p, n)))
  cotangents = (jnp.asarray(normal(b, l, h, p), dtype), jnp.asarray(normal(b, h, p, n)))
  return args, cotangents


def _outputs_and_grads(fn, args, cotangents):
  """(y, h_last) and the VJP of every array in ``args``, all under one jit."""
  def run(*args):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(cotangents)
  return jax.jit(run)(*args)


def _rel_err(a, b):
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  scale = np.abs(b).max()
  # An exactly-zero reference (e.g. dA with one token and no initial state) is compared
  # absolutely.
  return np.abs(a - b).max() / (scale if scale > 0 else 1.0)


def _check_against_oracle(*, l, g, with_init, chunk_size, dtype=jnp.float32, b=2, h=4, p=8,
                          n=16, seed=0, **kernel_kwargs):
  args, cotangents = _inputs(seed, b=b, l=l, h=h, p=p, g=g, n=n, dtype=dtype,
                             with_init=with_init)

  def kernel(x, dt, A, B, C, h0=None):
    return ssd(x, dt, A, B, C, chunk_size=chunk_size, initial_state=h0, **kernel_kwargs)

  def oracle(x, dt, A, B, C, h0=None):
    return ssd_scan(x, dt, A, B, C, h0)

  (y, h_last), grads = _outputs_and_grads(kernel, args, cotangents)
  (y_ref, h_last_ref), grads_ref = _outputs_and_grads(oracle, args, cotangents)
  tol = _TOL[dtype]
  chex.assert_shape(y, (b, l, h, p))
  chex.assert_shape(h_last, (b, h, p, n))
  assert y.dtype == args[0].dtype and h_last.dtype == jnp.float32
  errors = {"y": _rel_err(y, y_ref), "h_last": _rel_err(h_last, h_last_ref)}
  for name, arg, grad, grad_ref in zip(_NAMES, args, grads, grads_ref):
    assert grad.shape == arg.shape and grad.dtype == arg.dtype, name
    assert np.all(np.isfinite(np.asarray(grad, np.float32))), name
    errors["d" + name] = _rel_err(grad, grad_ref)
  bad = {k: float(v) for k, v in errors.items() if not v <= tol}
  assert not bad, f"relative errors above {tol}: {bad}"


# Lengths x groups x initial state, pairwise-covering (every pair of values of any two factors
# appears): each case costs a ~3 s XLA compile of the interpreted kernels on this CPU. On the
# TPU layout the chunk is a multiple of 128 lanes (or the whole length when shorter): l = 1 and
# 65 run one chunk, 1000 eight (the last one padded).
@pytest.mark.parametrize("l, chunk_size, g, with_init", [
    (1, 16, 1, False), (1, 16, 2, True), (65, 16, 1, True), (65, 16, 2, False),
    (1000, 64, 1, False), (1000, 64, 2, True)])
def test_matches_scan_oracle_f32(l, chunk_size, g, with_init):
  # l = 1000 with b = 1 and p != n keeps the long case cheap and catches p/n mix-ups.
  shape = dict(b=1, p=16, n=8) if l == 1000 else {}
  _check_against_oracle(l=l, g=g, with_init=with_init, chunk_size=chunk_size, **shape)


@pytest.mark.parametrize("l, chunk_size, g, with_init", [(65, 16, 2, True), (1000, 64, 1, False)])
def test_matches_scan_oracle_bf16(l, chunk_size, g, with_init):
  _check_against_oracle(l=l, g=g, with_init=with_init, chunk_size=chunk_size,
                        dtype=jnp.bfloat16, b=1, seed=1)


# Mamba-2's head dims (64: a half lane tile, which the TPU layout keeps unpadded on sublanes;
# 128) with d_state 128, over lengths that are (256) and are not (300) whole 128-token chunks;
# dtype x head dim x length x groups pairwise-covering. h = 8, p = 128 runs a group's heads in
# two blocks of 4 (tpu.head_block), dB and dC summed over both.
@pytest.mark.parametrize("dtype, p, l, h, g, with_init", [
    (jnp.float32, 64, 300, 4, 2, True), (jnp.float32, 128, 256, 8, 1, False),
    (jnp.bfloat16, 64, 256, 4, 2, False), (jnp.bfloat16, 128, 300, 8, 1, True)])
def test_mamba2_head_dims_match_scan_oracle(dtype, p, l, h, g, with_init):
  _check_against_oracle(l=l, g=g, with_init=with_init, chunk_size=128, dtype=dtype, b=1, h=h,
                        p=p, n=128, seed=4)


@pytest.mark.parametrize("l, chunk_size, g, with_init", [(65, 16, 2, True), (1000, 64, 1, False)])
def test_gpu_kernel_matches_scan_oracle(l, chunk_size, g, with_init):
  """The Triton-formulated kernels (loop over chunks in-kernel), run in interpret mode."""
  _check_against_oracle(l=l, g=g, with_init=with_init, chunk_size=chunk_size, b=1, seed=2,
                        lowering="gpu")


@pytest.mark.parametrize("dtype, l, h, p", [(jnp.float32, 20, 2, 8), (jnp.bfloat16, 300, 8, 128)])
def test_tpu_memory_semantics(dtype, l, h, p):
  """pltpu.InterpretParams emulates TPU VMEM/HBM: NaN-filled uninitialized buffers, bounds
  checks, and write-back only when a block index changes (resident h0/h_last, dB/dC
  accumulated over a group's heads: h = 8, p = 128 in two head blocks; the state carried
  across chunks and the last chunk overhanging the sequence: l = 300 is three)."""
  _check_against_oracle(l=l, g=1, with_init=True, chunk_size=8, b=1, h=h, p=p, n=8, seed=3,
                        dtype=dtype, interpret=pltpu.InterpretParams())


def _kernel_dots(jaxpr, in_kernel=False):
  """Every dot_general inside the pallas_calls of a jaxpr (and their control flow)."""
  dots = []
  for eqn in jaxpr.eqns:
    if in_kernel and eqn.primitive.name == "dot_general":
      dots.append(eqn)
    for sub in jax_core.jaxprs_in_params(eqn.params):
      dots += _kernel_dots(sub, in_kernel or eqn.primitive.name == "pallas_call")
  return dots


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_mosaic_matmuls_take_input_dtype_accumulate_f32(dtype):
  """The compiled TPU kernels (forward and backward) feed the MXU the inputs' dtype and
  accumulate in float32."""
  args, cotangents = _inputs(0, b=1, l=200, h=2, p=64, g=1, n=128, dtype=dtype,
                             with_init=False)

  def fwd_bwd(*args):
    out, vjp = jax.vjp(lambda *a: ssd(*a, chunk_size=128, lowering="tpu", interpret=False),
                       *args)
    return out, vjp(cotangents)

  dots = _kernel_dots(jax.make_jaxpr(fwd_bwd)(*args).jaxpr)
  # forward: 4 matmuls; backward: 10 (see chunk_math.chunk_backward_t).
  assert len(dots) == 14, len(dots)
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [dtype, dtype], eqn
    assert eqn.outvars[0].aval.dtype == jnp.float32, eqn


def test_bad_inputs_raise():
  args, _ = _inputs(0, b=1, l=4, h=3, p=4, g=2, n=4, dtype=jnp.float32, with_init=False)
  with pytest.raises(ValueError, match="multiple of groups"):
    ssd(*args, chunk_size=4)
  args, _ = _inputs(0, b=1, l=4, h=2, p=4, g=1, n=4, dtype=jnp.float32, with_init=False)
  with pytest.raises(ValueError, match="initial_state"):
    ssd(*args, chunk_size=4, initial_state=jnp.zeros((1, 2, 4, 5)))
  with pytest.raises(ValueError, match="chunk_size"):
    ssd(*args, chunk_size=0)
  with pytest.raises(ValueError, match="InterpretParams"):
    ssd(*args, chunk_size=4, lowering="gpu", interpret=pltpu.InterpretParams())
