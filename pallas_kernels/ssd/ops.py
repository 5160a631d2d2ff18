"""Public entry point of the Pallas SSD kernel: layout, padding, dispatch and the custom VJP.

Contract (that of ``mdm_jax.ssm.ssd``), per head with state ``h_t`` of shape (p, n)::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * outer(x_t, B_t);   y_t = h_t @ C_t

    x (b, l, h, p); dt (b, l, h) > 0; A (h,) < 0; B, C (b, l, g, n), h % g == 0, head i reads
    group i // (h // g); initial_state (b, h, p, n) or None
    -> y (b, l, h, p) in x.dtype, h_last (b, h, p, n) float32

The caller's arrays are rearranged once into the kernels' layout (heads before length, per-step
scalars as (chunk count, 1, chunk) rows; on TPU x, y and their cotangents transposed to
(b, h, p, length), time on lanes, so that the head dim is not padded to 128 lanes) and
zero-padded: the length to a multiple of the chunk with dt = 0 (decay 1, no input: the state
passes through unchanged, so h_last is exact; on TPU only dt's rows and a sequence shorter
than one chunk, longer ones overhang the last chunk instead), p and n to the target's tile.
All padding is sliced off again. dt, its cumulative sums and the states are float32 whatever
the input dtype.

The backward is a second pair of Pallas kernels (``jax.custom_vjp``): a reverse walk over chunks
carrying the state cotangent; the forward saves only the state entering each chunk
(b, h, l / chunk, p, n) besides the inputs, and the backward recomputes everything inside a
chunk from them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from mdm_jax.ssm.contract import check_shapes
from pallas_kernels.ssd import gpu
from pallas_kernels.ssd import tpu

_F32 = jnp.float32
LOWERINGS = ("tpu", "gpu")


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static configuration of one call: padded tile sizes, kernel lowering, interpret mode."""
  chunk: int          # the kernels' chunk length (chunk_size rounded up to the target's tile)
  head_dim: int       # p padded
  state_dim: int      # n padded
  lowering: str       # "tpu" (Mosaic, also the interpret-mode default) or "gpu" (Triton)
  interpret: Any      # False, True or a pltpu.InterpretParams


def _round_up(v, m):
  return -(-v // m) * m


def _next_pow2(v):
  return 1 << max(v - 1, 0).bit_length()


def _make_plan(chunk_size, l, p, n, itemsize, lowering, interpret):
  if lowering == "tpu":
    # TPU tile: minor (lane) dims multiples of 128; second-minor dims multiples of 8 rows of
    # 32 bits, i.e. 16 for bf16 (``itemsize`` is the narrowest of x, B and C). The chunk is
    # on lanes (x transposed) and on sublanes (B, C): a multiple of 128, or, when the whole
    # length fits in one chunk, that length (a block spanning a whole dimension may be any
    # multiple of the sublane tile). p is on sublanes, n on lanes.
    sublanes = 8 * max(1, 4 // itemsize)
    chunk = min(_round_up(chunk_size, 128), _round_up(l, sublanes))
    return _Plan(chunk, _round_up(p, sublanes), _round_up(n, 128), lowering, interpret)
  # Triton: every loaded tensor a power of two per dimension, and >= 16 for tl.dot.
  return _Plan(max(16, _next_pow2(chunk_size)), max(16, _next_pow2(p)), max(16, _next_pow2(n)),
               lowering, interpret)


def _pad_to(a, shape):
  return jnp.pad(a, [(0, t - s) for s, t in zip(a.shape, shape)])


def _seq_layout(v, length, minor):
  """(b, l, k, d) -> (b, k, length, minor), zero-padded."""
  v = jnp.swapaxes(v, 1, 2)
  return _pad_to(v, v.shape[:2] + (length, minor))


def _from_seq_layout(v, l, d):
  """Inverse of ``_seq_layout``: (b, k, lp, dp) -> (b, l, k, d)."""
  return jnp.swapaxes(v[:, :, :l, :d], 1, 2)


def _head_layout(v, length, plan):
  """x, dy (b, l, h, p) -> the kernels' layout: (b, h, p, length) on TPU (time on lanes), else
  (b, h, length, p); zero-padded."""
  if plan.lowering == "tpu":
    v = jnp.transpose(v, (0, 2, 3, 1))
    return _pad_to(v, v.shape[:2] + (plan.head_dim, length))
  return _seq_layout(v, length, plan.head_dim)


def _from_head_layout(v, l, p, plan):
  """Inverse of ``_head_layout``: -> (b, l, h, p)."""
  if plan.lowering == "tpu":
    return jnp.transpose(v[:, :, :p, :l], (0, 3, 1, 2))
  return _from_seq_layout(v, l, p)


def _seq_length(l, plan):
  """Length of the kernels' x, B and C: on TPU l itself (the last chunk's blocks overhang it,
  see ``tpu.py``) unless it is one chunk; else whole chunks."""
  if plan.lowering == "tpu" and l > plan.chunk:
    return l
  return _round_up(l, plan.chunk)


def _kernel_inputs(x, dt, A, B, C, plan):
  """The kernels' layout: see ``tpu.forward`` and ``gpu.forward``."""
  b, l, h, _ = x.shape
  q = plan.chunk
  lp = _round_up(l, q)
  dtk = _pad_to(jnp.swapaxes(dt.astype(_F32), 1, 2), (b, h, lp)).reshape(b, h, lp // q, 1, q)
  ak = dtk * A.astype(_F32)[None, :, None, None, None]
  ls = _seq_length(l, plan)
  return (_head_layout(x, ls, plan), dtk, ak, _seq_layout(B, ls, plan.state_dim),
          _seq_layout(C, ls, plan.state_dim))


def _kernels(plan):
  return tpu if plan.lowering == "tpu" else gpu


def _forward(x, dt, A, B, C, h0, plan):
  b, l, h, p = x.shape
  n = B.shape[3]
  inputs = _kernel_inputs(x, dt, A, B, C, plan)
  h0k = _pad_to(h0, (b, h, plan.head_dim, plan.state_dim))
  y, h_enter, h_last = _kernels(plan).forward(*inputs, h0k, interpret=plan.interpret)
  return (_from_head_layout(y, l, p, plan), h_last[:, :, :p, :n]), h_enter


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _ssd(x, dt, A, B, C, h0, plan):
  return _forward(x, dt, A, B, C, h0, plan)[0]


def _ssd_fwd(x, dt, A, B, C, h0, plan):
  out, h_enter = _forward(x, dt, A, B, C, h0, plan)
  return out, (x, dt, A, B, C, h_enter)


def _ssd_bwd(plan, residuals, cotangents):
  x, dt, A, B, C, h_enter = residuals
  dy, dh_last = cotangents
  b, l, h, p = x.shape
  g, n = B.shape[2], B.shape[3]
  xk, dtk, ak, bk, ck = _kernel_inputs(x, dt, A, B, C, plan)
  dyk = _head_layout(dy, bk.shape[2], plan)
  dhk = _pad_to(dh_last.astype(_F32), (b, h, plan.head_dim, plan.state_dim))
  dx, db, dc, ddt, da, dh0 = _kernels(plan).backward(
      xk, dtk, ak, bk, ck, h_enter, dyk, dhk, interpret=plan.interpret)
  if db.shape[1] != g:  # per-head dB, dC (GPU): sum each group's heads
    db = db.reshape(b, g, h // g, *db.shape[2:]).sum(axis=2)
    dc = dc.reshape(b, g, h // g, *dc.shape[2:]).sum(axis=2)
  # a = dt * A: its cotangent da feeds both dt and A.
  ddt = ddt + da * A.astype(_F32)[None, :, None, None, None]
  dA = jnp.sum(da * dtk, axis=(0, 2, 3, 4))
  ddt = jnp.swapaxes(ddt.reshape(b, h, -1)[:, :, :l], 1, 2)
  return (_from_head_layout(dx, l, p, plan).astype(x.dtype), ddt.astype(dt.dtype),
          dA.astype(A.dtype),
          _from_seq_layout(db, l, n).astype(B.dtype), _from_seq_layout(dc, l, n).astype(C.dtype),
          dh0[:, :, :p, :n])


_ssd.defvjp(_ssd_fwd, _ssd_bwd)


def ssd(x, dt, A, B, C, *, chunk_size: int, initial_state: Optional[jax.Array] = None,
        interpret: Any = None, lowering: Optional[str] = None):
  """Chunked SSD scan as Pallas kernels (forward and custom-VJP backward).

  Args:
    x: (b, l, h, p) inputs.
    dt: (b, l, h) positive step sizes.
    A: (h,) negative decay rates.
    B, C: (b, l, g, n) input and output projections; h % g == 0.
    chunk_size: tokens per chunk (rounded up to the target's tile: on TPU a multiple of 128,
      or the whole length when shorter; the result does not depend on it beyond float
      rounding).
    initial_state: (b, h, p, n) state before the first token, or None for zeros.
    interpret: None (interpret on CPU, compile elsewhere), a bool, or a
      ``pltpu.InterpretParams()`` to emulate TPU memory semantics (TPU lowering only).
    lowering: "tpu" (Mosaic; grid over chunks) or "gpu" (Triton; loop over chunks). None picks
      from ``jax.default_backend()``: "gpu" on GPU, "tpu" otherwise (interpret mode on CPU).

  Returns:
    y (b, l, h, p) in x.dtype and h_last (b, h, p, n) float32.
  """
  check_shapes(x, dt, A, B, C, initial_state)
  if chunk_size < 1:
    raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
  backend = jax.default_backend()
  if lowering is None:
    lowering = "gpu" if backend == "gpu" else "tpu"
  if lowering not in LOWERINGS:
    raise ValueError(f"ssd: unknown lowering {lowering!r}; choose one of {LOWERINGS} or None")
  if interpret is None:
    interpret = backend == "cpu"
  if isinstance(interpret, pltpu.InterpretParams) and lowering != "tpu":
    raise ValueError("ssd: pltpu.InterpretParams emulates TPU memory; use lowering='tpu' with it,"
                     " or interpret=True for the GPU kernel")
  b, l, h, p = x.shape
  itemsize = min(jnp.dtype(v.dtype).itemsize for v in (x, B, C))
  plan = _make_plan(chunk_size, l, p, B.shape[3], itemsize, lowering, interpret)
  h0 = (jnp.zeros((b, h, p, B.shape[3]), _F32) if initial_state is None
        else initial_state.astype(_F32))
  return _ssd(x, dt, A, B, C, h0, plan)
