"""Per-chunk SSD arithmetic on values (not refs), shared by the TPU and GPU kernel bodies.

One chunk of ``q`` steps of one head (p head dim, n state size, all padded by the caller)::

    a_t = dt_t * A,   acum_t = sum_{s<=t} a_s,   total = sum_s a_s,   xdt_s = dt_s * x_s
    y_t   = sum_{s<=t} exp(acum_t - acum_s) (C_t . B_s) xdt_s + exp(acum_t) h_in C_t
    h_out = exp(total) h_in + sum_s exp(total - acum_s) outer(xdt_s, B_s)

Everything is float32 whatever the input dtype. Per-step vectors come in as rows (1, q)
(lane-dense on TPU); the column form (q, 1) is made with a masked reduction against the
identity rather than a transpose, which keeps to ops that both Mosaic and Triton lower.
Matmuls use ``Precision.HIGHEST`` so f32 operands stay f32 on the MXU (TPU) and use IEEE
rather than TF32 on GPU. Only ``lax`` / ``jnp`` ops that Mosaic TPU and Pallas Triton both
lower are used here: 2-D iota, where, exp, keepdims sums and 2-D ``dot_general``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32


def _dot(a, b, contract=(1, 0)):
  """2-D matmul contracting ``a``'s axis ``contract[0]`` with ``b``'s ``contract[1]``."""
  return lax.dot_general(
      a, b, (((contract[0],), (contract[1],)), ((), ())),
      precision=lax.Precision.HIGHEST, preferred_element_type=_F32)


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

