"""SSD forward and backward ``pallas_call``s for TPU (Mosaic); also the default in interpret mode.

Grid ``(batch, groups, chunks, head blocks)``: the chunk axis is sequential (``"arbitrary"``) and
the running state of each of the group's heads lives in a VMEM scratch ``(heads_per_group, p,
n)``. One grid step runs a block of ``hb`` heads of one group (a loop inside the kernel, the
group's ``C B^T`` computed once for them), so that a step moves blocks big enough to amortize
its fixed cost. Head blocks are the innermost axis so that the group's B and C blocks stay
resident while its heads run (fetched once per group and chunk), and the backward accumulates
dB and dC over the group's heads in the output block instead of writing one copy per head.
x and its kin are transposed, time on the 128 lanes and the head dim on sublanes, so that
Mamba-2's head dim 64 is not padded to a full lane tile (see ``chunk_math``). Blocks (the chunk
a multiple of 128 lanes, or the whole length, padded to the sublane tile, when it fits in one
chunk; n padded by the caller to a multiple of 128 lanes; p to a multiple of 8 sublanes, 16
for bf16). The length itself is not padded: the last chunk's blocks overhang the arrays, the
kernels zero what they read there (dt is zero-padded, a small array) and Pallas drops what
they write there.

  x, y, dy, dx          (hb, p, chunk)  a head block, one chunk, transposed
  dt, dt * A, ddt, da   (hb, 1, chunk)  lane-dense rows
  B, C, dB, dC          (chunk, n)      one group, one chunk
  entering states       (hb, p, n)      a head block, one chunk (written forward, read backward)
  h0, h_last, dh_last, dh0   (heads_per_group, p, n)  resident per (batch, group)

Matmul operands are in the dtype of x, B and C (bf16 stays bf16 into the MXU), accumulation
and everything else float32.

The backward walks the chunks in reverse (index maps read chunk ``nc - 1 - i``), carrying the
state cotangent in VMEM scratch; the only stored intermediates are the states entering each
chunk (O(l / chunk) states), everything inside a chunk is recomputed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.ssd import chunk_math

_SEMANTICS = ("parallel", "parallel", "arbitrary", "arbitrary")


def _mm_dtype(*arrays):
  """The MXU operand dtype: the inputs' promoted dtype (bf16 when x, B and C all are)."""
  return jnp.result_type(*arrays)


# Heads per grid step: the most of a group's heads (a divisor) with hb * p <= this, i.e. x
# blocks of up to (512, chunk) and entering-state blocks of up to 512 x n float32.
_MAX_BLOCK_ROWS = 512


def head_block(heads_per_group: int, p: int) -> int:
  """Heads per grid step (see ``_MAX_BLOCK_ROWS``)."""
  return max(d for d in range(1, heads_per_group + 1)
             if heads_per_group % d == 0 and (d == 1 or d * p <= _MAX_BLOCK_ROWS))


def _masked(v, steps_left, axis):
  """``v`` with the steps at or past ``steps_left`` along ``axis`` zeroed: the last chunk's
  block overhangs the unpadded length and what it holds there is undefined (None: none does)."""
  if steps_left is None:
    return v
  keep = lax.broadcasted_iota(jnp.int32, v.shape, axis) < steps_left
  return jnp.where(keep, v, jnp.zeros_like(v))


def _steps_left(chunk, q, length):
  """Steps of the sequence from the start of ``chunk`` on; None when the chunks tile it."""
  return None if length % q == 0 else length - chunk * q


def _fwd_kernel(x_ref, dt_ref, a_ref, b_ref, c_ref, h0_ref,
                y_ref, h_enter_ref, h_last_ref, state_ref, *, mm_dtype, length):
  ci, hi = pl.program_id(2), pl.program_id(3)
  hb = x_ref.shape[0]
  heads = pl.ds(hi * hb, hb)  # this block's heads within the group
  left = _steps_left(ci, dt_ref.shape[-1], length)
  b = _masked(b_ref[...], left, 0)
  c = _masked(c_ref[...], left, 0)
  cb = chunk_math.scores(b, c, mm_dtype)

  @pl.when(ci == 0)
  def _():
    state_ref[heads] = h0_ref[heads]

  def head(j, carry):
    k = hi * hb + j
    h = state_ref[k]
    h_enter_ref[j] = h
    y, h_out = chunk_math.chunk_forward_t(_masked(x_ref[j], left, 1), dt_ref[j], a_ref[j], b,
                                          c, cb, h, mm_dtype)
    y_ref[j] = y.astype(y_ref.dtype)
    state_ref[k] = h_out
    return carry

  lax.fori_loop(0, hb, head, 0)

  @pl.when(ci == pl.num_programs(2) - 1)
  def _():
    h_last_ref[heads] = state_ref[heads]


def _bwd_kernel(x_ref, dt_ref, a_ref, b_ref, c_ref, h_enter_ref, dy_ref, dh_last_ref,
                dx_ref, db_ref, dc_ref, ddt_ref, da_ref, dh0_ref, dh_ref, *, mm_dtype, length):
  ci, hi = pl.program_id(2), pl.program_id(3)
  hb = x_ref.shape[0]
  heads = pl.ds(hi * hb, hb)
  left = _steps_left(pl.num_programs(2) - 1 - ci, dt_ref.shape[-1], length)
  b = _masked(b_ref[...], left, 0)
  c = _masked(c_ref[...], left, 0)
  cb = chunk_math.scores(b, c, mm_dtype)

  @pl.when(ci == 0)  # Step 0 of the reverse walk is the last chunk.
  def _():
    dh_ref[heads] = dh_last_ref[heads]

  def head(j, carry):
    db_sum, dc_sum = carry
    k = hi * hb + j
    dx, db, dc, ddt, da, dh_in = chunk_math.chunk_backward_t(
        _masked(x_ref[j], left, 1), dt_ref[j], a_ref[j], b, c, cb, h_enter_ref[j],
        _masked(dy_ref[j], left, 1), dh_ref[k], mm_dtype)
    dx_ref[j] = dx.astype(dx_ref.dtype)
    ddt_ref[j] = ddt
    da_ref[j] = da
    dh_ref[k] = dh_in
    return db_sum + db, dc_sum + dc

  zeros = jnp.zeros(b.shape, jnp.float32)
  db, dc = lax.fori_loop(0, hb, head, (zeros, zeros))

  @pl.when(hi == 0)
  def _():
    db_ref[...] = db
    dc_ref[...] = dc

  @pl.when(hi > 0)
  def _():
    db_ref[...] += db
    dc_ref[...] += dc

  @pl.when(ci == pl.num_programs(2) - 1)
  def _():
    dh0_ref[heads] = dh_ref[heads]


def _specs(r, hb, nc, q, pp, np_, reverse):
  """BlockSpecs for the (batch, group, chunk, head block) grid; ``reverse`` walks chunks back."""
  chunk = (lambda i: nc - 1 - i) if reverse else (lambda i: i)
  blocks = r // hb  # head blocks per group
  return dict(
      head_seq=pl.BlockSpec((None, hb, pp, q),
                            lambda bi, gi, ci, hi: (bi, gi * blocks + hi, 0, chunk(ci))),
      head_row=pl.BlockSpec((None, hb, None, 1, q),
                            lambda bi, gi, ci, hi: (bi, gi * blocks + hi, chunk(ci), 0, 0)),
      group_seq=pl.BlockSpec((None, None, q, np_),
                             lambda bi, gi, ci, hi: (bi, gi, chunk(ci), 0)),
      head_state=pl.BlockSpec((None, hb, None, pp, np_),
                              lambda bi, gi, ci, hi: (bi, gi * blocks + hi, chunk(ci), 0, 0)),
      group_states=pl.BlockSpec((None, None, r, pp, np_),
                                lambda bi, gi, ci, hi: (bi, gi, 0, 0, 0)),
  )


def forward(xk, dtk, ak, bk, ck, h0, *, interpret):
  """Chunked SSD forward on kernel-layout arrays (made by ``ops._kernel_inputs``).

  Args:
    xk: (b, h, pp, lp) inputs, transposed; dtk, ak: (b, h, nc, 1, q) f32 dt and dt * A, zero
      past the sequence; bk, ck: (b, g, lp, np) projections; h0: (b, h, pp, np) f32 initial
      state. The length lp need not be a multiple of the chunk q: the last chunk's blocks
      overhang it and the kernels zero what they read there.
    interpret: passed to ``pallas_call``.

  Returns:
    y (b, h, pp, lp) in xk.dtype, entering states (b, h, nc, pp, np) f32, h_last (b, h, pp, np).
  """
  b, h, pp, lp = xk.shape
  nc, q = dtk.shape[2], dtk.shape[4]
  g, np_ = bk.shape[1], bk.shape[3]
  r = h // g
  hb = head_block(r, pp)
  s = _specs(r, hb, nc, q, pp, np_, reverse=False)
  y, h_enter, h_last = pl.pallas_call(
      functools.partial(_fwd_kernel, mm_dtype=_mm_dtype(xk, bk, ck), length=lp),
      grid=(b, g, nc, r // hb),
      in_specs=[s["head_seq"], s["head_row"], s["head_row"], s["group_seq"], s["group_seq"],
                s["group_states"]],
      out_specs=[s["head_seq"], s["head_state"], s["group_states"]],
      out_shape=[jax.ShapeDtypeStruct((b, h, pp, lp), xk.dtype),
                 jax.ShapeDtypeStruct((b, h, nc, pp, np_), jnp.float32),
                 jax.ShapeDtypeStruct((b, g, r, pp, np_), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((r, pp, np_), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
      interpret=interpret,
      name="ssd_fwd_tpu",
  )(xk, dtk, ak, bk, ck, h0.reshape(b, g, r, pp, np_))
  return y, h_enter, h_last.reshape(b, h, pp, np_)


def backward(xk, dtk, ak, bk, ck, h_enter, dyk, dh_last, *, interpret):
  """Reverse pass over chunks.

  Args as ``forward``, plus h_enter (b, h, nc, pp, np) from it, dyk (b, h, pp, lp) and
  dh_last (b, h, pp, np) f32.

  Returns dx (b, h, pp, lp) in xk.dtype, dB and dC per group (b, g, lp, np) f32, ddt and da
  (b, h, nc, 1, q) f32 (see ``chunk_math.chunk_backward_t``) and dh0 (b, h, pp, np) f32.
  """
  b, h, pp, lp = xk.shape
  nc, q = dtk.shape[2], dtk.shape[4]
  g, np_ = bk.shape[1], bk.shape[3]
  r = h // g
  hb = head_block(r, pp)
  s = _specs(r, hb, nc, q, pp, np_, reverse=True)
  row = jax.ShapeDtypeStruct((b, h, nc, 1, q), jnp.float32)
  group_seq = jax.ShapeDtypeStruct((b, g, lp, np_), jnp.float32)
  dx, db, dc, ddt, da, dh0 = pl.pallas_call(
      functools.partial(_bwd_kernel, mm_dtype=_mm_dtype(xk, bk, ck), length=lp),
      grid=(b, g, nc, r // hb),
      in_specs=[s["head_seq"], s["head_row"], s["head_row"], s["group_seq"], s["group_seq"],
                s["head_state"], s["head_seq"], s["group_states"]],
      out_specs=[s["head_seq"], s["group_seq"], s["group_seq"], s["head_row"], s["head_row"],
                 s["group_states"]],
      out_shape=[jax.ShapeDtypeStruct((b, h, pp, lp), xk.dtype), group_seq, group_seq, row, row,
                 jax.ShapeDtypeStruct((b, g, r, pp, np_), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((r, pp, np_), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
      interpret=interpret,
      name="ssd_bwd_tpu",
  )(xk, dtk, ak, bk, ck, h_enter, dyk, dh_last.reshape(b, g, r, pp, np_))
  return dx, db, dc, ddt, da, dh0.reshape(b, h, pp, np_)
