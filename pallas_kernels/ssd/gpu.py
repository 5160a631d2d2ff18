"""SSD forward and backward ``pallas_call``s for GPU (Pallas Triton backend).

Triton runs grid programs concurrently, so the chunk recurrence cannot be a grid axis here:
the grid is ``(batch, heads)`` and each program walks its head's chunks in a ``fori_loop``,
carrying the (p, n) state (forward) or its cotangent (backward) in registers. Each program's
blocks span the whole padded sequence; the loop loads one chunk at a time with ``pl.ds``.
The per-chunk arithmetic is ``chunk_math``, the same as the TPU kernel's. Every tensor the
kernel loads is a power of two in each dimension (the caller pads chunk, p and n to powers of
two >= 16, as ``tl.dot`` requires). dB and dC are written per head and summed over each
group's heads by the caller.

The Triton backend is what jax 0.10 lowers Pallas GPU kernels with; jax 0.11 deprecates it
in favour of Mosaic GPU but still lowers it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.ssd import chunk_math


def _compiler_params(interpret):
  if interpret:
    return None
  # Imported only when compiling for GPU: the module is deprecated from jax 0.11 on.
  from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
  return pl_triton.CompilerParams(num_warps=4, num_stages=1)


def _fwd_kernel(x_ref, dt_ref, a_ref, b_ref, c_ref, h0_ref, y_ref, h_enter_ref, h_last_ref):
  nc, q = dt_ref.shape[0], dt_ref.shape[2]

  def step(ci, h):
    rows = pl.ds(pl.multiple_of(ci * q, q), q)
    h_enter_ref[ci] = h
    y, h_out = chunk_math.chunk_forward(x_ref[rows, :], dt_ref[ci], a_ref[ci], b_ref[rows, :],
                                        c_ref[rows, :], h)
    y_ref[rows, :] = y.astype(y_ref.dtype)
    return h_out

  h_last_ref[...] = lax.fori_loop(0, nc, step, h0_ref[...])


def _bwd_kernel(x_ref, dt_ref, a_ref, b_ref, c_ref, h_enter_ref, dy_ref, dh_last_ref,
                dx_ref, db_ref, dc_ref, ddt_ref, da_ref, dh0_ref):
  nc, q = dt_ref.shape[0], dt_ref.shape[2]

  def step(i, dh):
    ci = nc - 1 - i
    rows = pl.ds(pl.multiple_of(ci * q, q), q)
    dx, db, dc, ddt, da, dh_in = chunk_math.chunk_backward(
        x_ref[rows, :], dt_ref[ci], a_ref[ci], b_ref[rows, :], c_ref[rows, :], h_enter_ref[ci],
        dy_ref[rows, :], dh)
    dx_ref[rows, :] = dx.astype(dx_ref.dtype)
    db_ref[rows, :] = db
    dc_ref[rows, :] = dc
    ddt_ref[ci] = ddt
    da_ref[ci] = da
    return dh_in

  dh0_ref[...] = lax.fori_loop(0, nc, step, dh_last_ref[...])


def _specs(r, nc, q, lp, pp, np_):
  """Whole-sequence BlockSpecs for the (batch, head) grid."""
  return dict(
      head_seq=pl.BlockSpec((None, None, lp, pp), lambda bi, hi: (bi, hi, 0, 0)),
      head_seq_n=pl.BlockSpec((None, None, lp, np_), lambda bi, hi: (bi, hi, 0, 0)),
      head_rows=pl.BlockSpec((None, None, nc, 1, q), lambda bi, hi: (bi, hi, 0, 0, 0)),
      group_seq=pl.BlockSpec((None, None, lp, np_), lambda bi, hi: (bi, hi // r, 0, 0)),
      head_states=pl.BlockSpec((None, None, nc, pp, np_), lambda bi, hi: (bi, hi, 0, 0, 0)),
      head_state=pl.BlockSpec((None, None, pp, np_), lambda bi, hi: (bi, hi, 0, 0)),
  )


def forward(xk, dtk, ak, bk, ck, h0, *, interpret):
  """Same contract as ``tpu.forward``."""
  b, h, lp, pp = xk.shape
  nc, q = dtk.shape[2], dtk.shape[4]
  g, np_ = bk.shape[1], bk.shape[3]
  s = _specs(h // g, nc, q, lp, pp, np_)
  return pl.pallas_call(
      _fwd_kernel,
      grid=(b, h),
      in_specs=[s["head_seq"], s["head_rows"], s["head_rows"], s["group_seq"], s["group_seq"],
                s["head_state"]],
      out_specs=[s["head_seq"], s["head_states"], s["head_state"]],
      out_shape=[jax.ShapeDtypeStruct((b, h, lp, pp), xk.dtype),
                 jax.ShapeDtypeStruct((b, h, nc, pp, np_), jnp.float32),
                 jax.ShapeDtypeStruct((b, h, pp, np_), jnp.float32)],
      compiler_params=_compiler_params(interpret),
      interpret=interpret,
      name="ssd_fwd_gpu",
  )(xk, dtk, ak, bk, ck, h0)


def backward(xk, dtk, ak, bk, ck, h_enter, dyk, dh_last, *, interpret):
  """As ``tpu.backward``, except dB and dC come per head: (b, h, lp, np) f32."""
  b, h, lp, pp = xk.shape
  nc, q = dtk.shape[2], dtk.shape[4]
  g, np_ = bk.shape[1], bk.shape[3]
  s = _specs(h // g, nc, q, lp, pp, np_)
  rows = jax.ShapeDtypeStruct((b, h, nc, 1, q), jnp.float32)
  head_seq_n = jax.ShapeDtypeStruct((b, h, lp, np_), jnp.float32)
  return pl.pallas_call(
      _bwd_kernel,
      grid=(b, h),
      in_specs=[s["head_seq"], s["head_rows"], s["head_rows"], s["group_seq"], s["group_seq"],
                s["head_states"], s["head_seq"], s["head_state"]],
      out_specs=[s["head_seq"], s["head_seq_n"], s["head_seq_n"], s["head_rows"],
                 s["head_rows"], s["head_state"]],
      out_shape=[jax.ShapeDtypeStruct((b, h, lp, pp), xk.dtype), head_seq_n, head_seq_n, rows,
                 rows, jax.ShapeDtypeStruct((b, h, pp, np_), jnp.float32)],
      compiler_params=_compiler_params(interpret),
      interpret=interpret,
      name="ssd_bwd_gpu",
  )(xk, dtk, ak, bk, ck, h_enter, dyk, dh_last)
