"""Per-chunk SSD arithmetic on values (not refs) for the TPU and GPU kernel bodies.

One chunk of ``q`` steps of one head (p head dim, n state size, all padded by the caller)::

    a_t = dt_t * A,   acum_t = sum_{s<=t} a_s,   total = sum_s a_s,   xdt_s = dt_s * x_s
    y_t   = sum_{s<=t} exp(acum_t - acum_s) (C_t . B_s) xdt_s + exp(acum_t) h_in C_t
    h_out = exp(total) h_in + sum_s exp(total - acum_s) outer(xdt_s, B_s)

Two layouts of a chunk's x, y and their cotangents:
  * ``chunk_forward`` / ``chunk_backward`` (GPU): x is (q, p), time on rows. Everything is
    float32 whatever the input dtype.
  * ``chunk_forward_t`` / ``chunk_backward_t`` (TPU): x is (p, q), time on the 128 lanes and
    the head dim on sublanes, so a head dim of 64 fills whole vregs and MXU passes instead of
    being padded to 128 lanes, and the per-step rows (1, q) broadcast against x directly.
    Matmul operands are in ``mm_dtype`` (the inputs' dtype: bf16 inputs go to the MXU as bf16,
    as in Mamba-2's reference kernels) with float32 accumulation; dt, the cumulative decays,
    the states and all elementwise arithmetic are float32.

Per-step vectors come in as rows (1, q) (lane-dense on TPU); the column form (q, 1) is made
with a masked reduction against the identity rather than a transpose, which keeps to ops that
both Mosaic and Triton lower. f32 matmuls use ``Precision.HIGHEST`` so f32 operands stay f32
on the MXU (TPU) and use IEEE rather than TF32 on GPU. Only ``lax`` / ``jnp`` ops that Mosaic
TPU and Pallas Triton both lower are used here: 2-D iota, where, exp, keepdims sums and 2-D
``dot_general``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32


def _dot(a, b, contract=(1, 0), mm_dtype=_F32):
  """2-D matmul contracting ``a``'s axis ``contract[0]`` with ``b``'s ``contract[1]``: operands
  cast to ``mm_dtype``, accumulated in float32."""
  f32 = jnp.dtype(mm_dtype) == _F32
  return lax.dot_general(
      a.astype(mm_dtype), b.astype(mm_dtype), (((contract[0],), (contract[1],)), ((), ())),
      precision=lax.Precision.HIGHEST if f32 else None, preferred_element_type=_F32)


def _masks(q):
  """``causal[t, s] = t >= s`` and ``eye[t, s] = t == s``, both (q, q)."""
  t = lax.broadcasted_iota(jnp.int32, (q, q), 0)
  s = lax.broadcasted_iota(jnp.int32, (q, q), 1)
  return t >= s, t == s


def _row_to_col(v, eye):
  """(1, q) -> (q, 1)."""
  return jnp.sum(jnp.where(eye, v, 0.0), axis=1, keepdims=True)


def _col_to_row(v, eye):
  """(q, 1) -> (1, q)."""
  return jnp.sum(jnp.where(eye, v, 0.0), axis=0, keepdims=True)


def _decays(a_row, causal, eye):
  """Cumulative log-decays of a chunk.

  Returns acum_col (q, 1), total (1, 1), the masked intra-chunk decay matrix
  ``exp(acum_t - acum_s)`` for t >= s else 0 (q, q), e_in = exp(acum) (q, 1) and
  e_out = exp(total - acum) (q, 1). Both exponents are <= 0 since A < 0 and dt >= 0.
  """
  acum_col = jnp.sum(jnp.where(causal, a_row, 0.0), axis=1, keepdims=True)
  acum_row = _col_to_row(acum_col, eye)
  total = jnp.sum(a_row, axis=1, keepdims=True)
  # Mask *before* exp: above the diagonal the segment sum is positive (would overflow) and
  # its gradient must be exactly zero, not 0 * inf.
  decay = jnp.exp(jnp.where(causal, acum_col - acum_row, -jnp.inf))
  return acum_col, total, decay, jnp.exp(acum_col), jnp.exp(total - acum_col)


def chunk_forward(x, dt_row, a_row, b, c, h):
  """One chunk forward.

  Args:
    x: (q, p) inputs, any float dtype.
    dt_row: (1, q) float32 step sizes (0 on padding).
    a_row: (1, q) float32 log-decays ``dt * A``.
    b, c: (q, n) input and output projections, any float dtype.
    h: (p, n) float32 state entering the chunk.

  Returns:
    y (q, p) float32 and the state leaving the chunk, (p, n) float32.
  """
  q = x.shape[0]
  causal, eye = _masks(q)
  _, total, decay, e_in, e_out = _decays(a_row, causal, eye)
  b = b.astype(_F32)
  c = c.astype(_F32)
  xdt = x.astype(_F32) * _row_to_col(dt_row, eye)
  cb = _dot(c, b, (1, 1))                                  # (q, q) C_t . B_s
  y = _dot(cb * decay, xdt) + e_in * _dot(c, h, (1, 1))   # intra-chunk + state-to-output
  h_out = jnp.exp(total) * h + _dot(xdt * e_out, b, (0, 0))
  return y, h_out


def chunk_backward(x, dt_row, a_row, b, c, h, dy, dh):
  """One chunk backward, given the cotangents of its outputs.

  Args:
    x, dt_row, a_row, b, c, h: as in ``chunk_forward`` (h is the state *entering* the chunk).
    dy: (q, p) cotangent of y.
    dh: (p, n) float32 cotangent of the state leaving the chunk.

  Returns:
    dx (q, p), db (q, n), dc (q, n), ddt_row (1, q) (through ``xdt`` only), da_row (1, q)
    (cotangent of the log-decay ``a = dt * A``; the caller adds ``da * A`` to ddt and
    ``sum(da * dt)`` to dA), and dh_in (p, n), the cotangent of the entering state. All f32.
  """
  q = x.shape[0]
  causal, eye = _masks(q)
  _, total, decay, e_in, e_out = _decays(a_row, causal, eye)
  x = x.astype(_F32)
  b = b.astype(_F32)
  c = c.astype(_F32)
  dy = dy.astype(_F32)
  dt_col = _row_to_col(dt_row, eye)
  xdt = x * dt_col
  cb = _dot(c, b, (1, 1))

  m = _dot(dy, xdt, (1, 1)) * decay            # (q, q) [t, s] = decay * (dy_t . xdt_s)
  g = m * cb                                   # cotangent of the segment sum acum_t - acum_s
  xdh = _dot(xdt, dh)                          # (q, n)
  dxdt = _dot(cb * decay, dy, (0, 0)) + e_out * _dot(b, dh, (1, 1))
  dc = _dot(m, b) + e_in * _dot(dy, h)
  db = _dot(m, c, (0, 0)) + e_out * xdh
  dh_in = jnp.exp(total) * dh + _dot(dy * e_in, c, (0, 0))

  # Cotangent of acum_t, then of a_u = sum over t >= u (acum is an inclusive cumsum), plus the
  # chunk total's, which every a_u feeds.
  to_state = e_out * jnp.sum(xdh * b, axis=1, keepdims=True)            # (q, 1)
  dacum = (jnp.sum(g, axis=1, keepdims=True)
           - _row_to_col(jnp.sum(g, axis=0, keepdims=True), eye)
           + e_in * jnp.sum(dy * _dot(c, h, (1, 1)), axis=1, keepdims=True)
           - to_state)
  dtotal = (jnp.exp(total) * jnp.sum(jnp.sum(dh * h, axis=1, keepdims=True), axis=0,
                                     keepdims=True)
            + jnp.sum(to_state, axis=0, keepdims=True))                    # (1, 1)
  da_row = jnp.sum(jnp.where(causal, dacum, 0.0), axis=0, keepdims=True) + dtotal
  ddt_row = _col_to_row(jnp.sum(dxdt * x, axis=1, keepdims=True), eye)
  return dxdt * dt_col, db, dc, ddt_row, da_row, dh_in



def scores(b, c, mm_dtype):
  """(q, q) ``[t, s] = C_t . B_s`` of one group's chunk, shared by the group's heads."""
  return _dot(c, b, (1, 1), mm_dtype)


def chunk_forward_t(xt, dt_row, a_row, b, c, cb, h, mm_dtype):
  """One chunk forward with time on lanes (the TPU layout).

  Args:
    xt: (p, q) inputs, transposed.
    dt_row, a_row: (1, q) float32 step sizes (0 on padding) and log-decays ``dt * A``.
    b, c: (q, n) input and output projections; cb: their ``scores``.
    h: (p, n) float32 state entering the chunk.
    mm_dtype: dtype of the matmul operands (accumulation is float32).

  Returns:
    y transposed, (p, q) float32, and the state leaving the chunk, (p, n) float32.
  """
  q = xt.shape[1]
  causal, eye = _masks(q)
  acum_col, total, decay, _, _ = _decays(a_row, causal, eye)
  acum_row = _col_to_row(acum_col, eye)
  dot = lambda u, v, contract: _dot(u, v, contract, mm_dtype)
  xdt = xt.astype(_F32) * dt_row                              # (p, q)
  y = (dot(xdt, cb * decay, (1, 1))                           # intra-chunk
       + jnp.exp(acum_row) * dot(h, c, (1, 1)))               # state-to-output
  h_out = jnp.exp(total) * h + dot(xdt * jnp.exp(total - acum_row), b, (1, 0))
  return y, h_out


def chunk_backward_t(xt, dt_row, a_row, b, c, cb, h, dyt, dh, mm_dtype):
  """One chunk backward with time on lanes, given the cotangents of its outputs.

  Args:
    xt, dt_row, a_row, b, c, cb, h, mm_dtype: as in ``chunk_forward_t`` (h *enters* the
      chunk).
    dyt: (p, q) cotangent of y, transposed.
    dh: (p, n) float32 cotangent of the state leaving the chunk.

  Returns:
    dx transposed (p, q), db (q, n), dc (q, n), ddt_row (1, q) (through ``xdt`` only), da_row
    (1, q) (cotangent of the log-decay ``a = dt * A``; the caller adds ``da * A`` to ddt and
    ``sum(da * dt)`` to dA), and dh_in (p, n), the cotangent of the entering state. All f32.
  """
  q = xt.shape[1]
  causal, eye = _masks(q)
  acum_col, total, decay, e_in, e_out = _decays(a_row, causal, eye)
  acum_row = _col_to_row(acum_col, eye)
  e_in_row, e_out_row = jnp.exp(acum_row), jnp.exp(total - acum_row)
  dot = lambda u, v, contract: _dot(u, v, contract, mm_dtype)
  xt = xt.astype(_F32)
  dyt = dyt.astype(_F32)
  xdt = xt * dt_row                            # (p, q)

  m = dot(dyt, xdt, (0, 0)) * decay            # (q, q) [t, s] = decay * (dy_t . xdt_s)
  g = m * cb                                   # cotangent of the segment sum acum_t - acum_s
  xdh = dot(xdt, dh, (0, 0))                   # (q, n)
  dxdt = dot(dyt, cb * decay, (1, 0)) + e_out_row * dot(dh, b, (1, 1))   # (p, q)
  dc = dot(m, b, (1, 0)) + e_in * dot(dyt, h, (0, 0))
  db = dot(m, c, (0, 0)) + e_out * xdh
  dh_in = jnp.exp(total) * dh + dot(dyt * e_in_row, c, (1, 0))

  # Cotangent of acum_t, then of a_u = sum over t >= u (acum is an inclusive cumsum), plus the
  # chunk total's, which every a_u feeds.
  to_state = e_out * jnp.sum(xdh * b.astype(_F32), axis=1, keepdims=True)    # (q, 1)
  from_state = e_in_row * jnp.sum(dyt * dot(h, c, (1, 1)), axis=0, keepdims=True)  # (1, q)
  dacum = (jnp.sum(g, axis=1, keepdims=True)
           - _row_to_col(jnp.sum(g, axis=0, keepdims=True) - from_state, eye)
           - to_state)
  dtotal = (jnp.exp(total) * jnp.sum(jnp.sum(dh * h, axis=1, keepdims=True), axis=0,
                                     keepdims=True)
            + jnp.sum(to_state, axis=0, keepdims=True))                    # (1, 1)
  da_row = jnp.sum(jnp.where(causal, dacum, 0.0), axis=0, keepdims=True) + dtotal
  ddt_row = jnp.sum(dxdt * xt, axis=0, keepdims=True)
  return dxdt * dt_row, db, dc, ddt_row, da_row, dh_in
