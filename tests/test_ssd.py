"""The chunked SSD (`impl="xla"`) against the sequential `lax.scan` oracle."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.ssm.ssd import ssd, ssd_chunked


def make_inputs(key, b, l, h, p, g, n, dtype, with_init):
  ks = jax.random.split(key, 7)
  x = jax.random.normal(ks[0], (b, l, h, p)).astype(dtype)
  dt = jax.nn.softplus(jax.random.normal(ks[1], (b, l, h)) - 1.0).astype(dtype)
  A = -jnp.exp(jax.random.uniform(ks[2], (h,), minval=-1.0, maxval=1.5))
  B = jax.random.normal(ks[3], (b, l, g, n)).astype(dtype)
  C = jax.random.normal(ks[4], (b, l, g, n)).astype(dtype)
  h0 = jax.random.normal(ks[5], (b, h, p, n)) if with_init else None
  return (x, dt, A, B, C, h0), ks[6]


def rel_err(a, b):
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  scale = np.max(np.abs(b))
  # An identically-zero oracle (e.g. dA with a zero state) is compared in absolute terms.
  return float(np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0))


forward = jax.jit(ssd, static_argnames=("impl", "chunk_size"))


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def value_and_grads(args, cot, impl, chunk_size):
  """Outputs and the VJP of a random cotangent w.r.t. every array input."""
  x, dt, A, B, C, h0 = args

  def f(x, dt, A, B, C, h0):
    return ssd(x, dt, A, B, C, initial_state=h0, chunk_size=chunk_size, impl=impl)

  out, vjp = jax.vjp(f, x, dt, A, B, C, h0)
  return out, vjp(cot)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000])
def test_xla_matches_sequential_scan(length, with_init, groups, dtype, tol):
  b, h, p, n = 2, 4, 8, 16
  (x, dt, A, B, C, h0), key = make_inputs(
      jax.random.PRNGKey(length * 7 + groups), b, length, h, p, groups, n, dtype, with_init)
  if h0 is None:  # the VJP needs an array; a zero initial state is the "no state" case.
    h0 = jnp.zeros((b, h, p, n), jnp.float32)
  k1, k2 = jax.random.split(key)
  cot = (jax.random.normal(k1, x.shape).astype(dtype), jax.random.normal(k2, h0.shape))
  args = (x, dt, A, B, C, h0 if with_init else None)
  if not with_init:
    # Exercise the `initial_state=None` path for the forward pass too.
    y_none, h_none = forward(x, dt, A, B, C, chunk_size=64, impl="xla")
    y_ref, h_ref = forward(x, dt, A, B, C, impl="scan")
    assert rel_err(y_none, y_ref) <= tol and rel_err(h_none, h_ref) <= tol
  args = (x, dt, A, B, C, h0)
  (y_ref, h_ref), g_ref = value_and_grads(args, cot, "scan", 64)
  (y, h_last), g = value_and_grads(args, cot, "xla", 64)

  assert y.dtype == dtype and h_last.dtype == jnp.float32
  chex.assert_shape(y, (b, length, h, p))
  chex.assert_shape(h_last, (b, h, p, n))
  assert rel_err(y, y_ref) <= tol
  assert rel_err(h_last, h_ref) <= tol
  for name, gi, gi_ref in zip(["x", "dt", "A", "B", "C", "initial_state"], g, g_ref):
    assert gi.shape == gi_ref.shape
    assert rel_err(gi, gi_ref) <= tol, (name, rel_err(gi, gi_ref))


def test_scan_oracle_matches_hand_recurrence():
  """The oracle itself against a plain numpy loop of h_t = a h + dt x B^T, y = h C."""
  (x, dt, A, B, C, h0), _ = make_inputs(jax.random.PRNGKey(3), 1, 5, 2, 3, 1, 4,
                                        jnp.float32, True)
  y, h_last = ssd(x, dt, A, B, C, initial_state=h0, impl="scan")
  xn, dtn, An, Bn, Cn = map(np.asarray, (x, dt, A, B, C))
  state = np.array(h0[0], np.float64)
  for t in range(5):
    for i in range(2):
      state[i] = (np.exp(dtn[0, t, i] * An[i]) * state[i]
                  + dtn[0, t, i] * np.outer(xn[0, t, i], Bn[0, t, 0]))
      np.testing.assert_allclose(y[0, t, i], state[i] @ Cn[0, t, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_last[0], state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [16, 128])
def test_other_chunk_sizes(chunk_size):
  (x, dt, A, B, C, h0), _ = make_inputs(jax.random.PRNGKey(5), 1, 300, 2, 8, 1, 8,
                                        jnp.float32, True)
  y, s = ssd(x, dt, A, B, C, initial_state=h0, chunk_size=chunk_size, impl="xla")
  y_ref, s_ref = ssd(x, dt, A, B, C, initial_state=h0, impl="scan")
  assert rel_err(y, y_ref) <= 1e-4 and rel_err(s, s_ref) <= 1e-4


def test_bf16_long_sequence_is_finite():
  """bf16 at 65,536 tokens: no NaN/Inf in outputs or in any gradient."""
  (x, dt, A, B, C, h0), _ = make_inputs(jax.random.PRNGKey(7), 1, 65536, 2, 16, 1, 16,
                                        jnp.bfloat16, True)
  A = A * 4.0  # strong decays make the masked segment sums very negative

  @jax.jit
  def loss_and_grads(x, dt, A, B, C, h0):
    def loss(*a):
      y, s = ssd(*a[:5], initial_state=a[5], impl="xla")
      return jnp.mean(y.astype(jnp.float32) ** 2) + jnp.mean(s ** 2)
    return jax.value_and_grad(loss, argnums=tuple(range(6)))(x, dt, A, B, C, h0)

  value, grads = loss_and_grads(x, dt, A, B, C, h0)
  assert np.isfinite(float(value))
  for gi in grads:
    assert np.all(np.isfinite(np.asarray(gi, np.float32)))


def test_bad_shapes_raise_clear_errors():
  (x, dt, A, B, C, _), _ = make_inputs(jax.random.PRNGKey(0), 1, 8, 3, 4, 2, 4,
                                       jnp.float32, False)
  with pytest.raises(ValueError, match="multiple of groups"):
    ssd(x, dt, A, B, C)
  with pytest.raises(ValueError, match="unknown impl"):
    ssd(x, dt, A, B[:, :, :1], C[:, :, :1], impl="cuda")
  with pytest.raises(ValueError, match="dt must be"):
    ssd(x, dt[:, :4], A, B[:, :, :1], C[:, :, :1])


def _chunked_vjp(args, cot, chunk_size, block_tokens):
  x, dt, A, B, C, h0 = args
  f = lambda *a: ssd_chunked(*a[:5], a[5], chunk_size=chunk_size, block_tokens=block_tokens)
  out, vjp = jax.vjp(f, x, dt, A, B, C, h0)
  return out, vjp(cot)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 4e-3)])
@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000, 4096])
def test_custom_vjp_matches_scan_gradients(length, dtype, tol):
  """The hand-derived backward against autodiff of the sequential scan: every input (x, dt,
  A, B, C, initial_state) with cotangents of both y and h_last, two groups of two heads, over
  one chunk, a partial chunk, several chunks in one block and many blocks (4096 tokens is 16
  blocks of 4 chunks). bf16 inputs give bf16 y and input cotangents, so both sides round
  their results to bf16 (one bf16 step is 2^-8 ~ 4e-3 relative) from the same f32 arithmetic
  (measured: under 1e-3 here; f32 under 3e-6)."""
  b, h, p, n, g = 1, 4, 4, 8, 2
  (x, dt, A, B, C, h0), key = make_inputs(jax.random.PRNGKey(length), b, length, h, p, g, n,
                                          dtype, True)
  k1, k2 = jax.random.split(key)
  cot = (jax.random.normal(k1, x.shape).astype(dtype), jax.random.normal(k2, h0.shape))
  args = (x, dt, A, B, C, h0)
  (y_ref, h_ref), g_ref = value_and_grads(args, cot, "scan", 64)
  (y, h_last), grads = jax.jit(_chunked_vjp, static_argnums=(2, 3))(args, cot, 64, 256)
  assert rel_err(y, y_ref) <= tol and rel_err(h_last, h_ref) <= tol
  for name, gi, gi_ref in zip(["x", "dt", "A", "B", "C", "initial_state"], grads, g_ref):
    assert gi.dtype == gi_ref.dtype and gi.shape == gi_ref.shape, name
    assert rel_err(gi, gi_ref) <= tol, (name, rel_err(gi, gi_ref))


@pytest.mark.parametrize("which", ["y", "h_last"])
@pytest.mark.parametrize("chunk_size,block_tokens", [(16, 16), (64, 256), (128, 1024)])
def test_custom_vjp_each_output_cotangent_alone(which, chunk_size, block_tokens):
  """Each output's cotangent on its own (the other zero), so an error in one path of the
  backward cannot hide behind the other; chunk and block sizes from one chunk per block up."""
  b, l, h, p, g, n = 2, 300, 4, 8, 1, 16
  (x, dt, A, B, C, h0), key = make_inputs(jax.random.PRNGKey(11), b, l, h, p, g, n,
                                          jnp.float32, True)
  dt = dt * 0.1  # weak decay: initial_state still reaches h_last
  k1, k2 = jax.random.split(key)
  dy = jax.random.normal(k1, x.shape) * (which == "y")
  dh = jax.random.normal(k2, h0.shape) * (which == "h_last")
  args, cot = (x, dt, A, B, C, h0), (dy, dh)
  _, g_ref = value_and_grads(args, cot, "scan", 64)
  _, grads = jax.jit(_chunked_vjp, static_argnums=(2, 3))(args, cot, chunk_size, block_tokens)
  for name, gi, gi_ref in zip(["x", "dt", "A", "B", "C", "initial_state"], grads, g_ref):
    if name == "C" and which == "h_last":  # C only reads the state out into y
      assert not np.any(np.asarray(gi)) and not np.any(np.asarray(gi_ref))
      continue
    assert np.max(np.abs(np.asarray(gi_ref))) > 0, name  # this input sees this cotangent
    assert rel_err(gi, gi_ref) <= 2e-5, (name, rel_err(gi, gi_ref))
