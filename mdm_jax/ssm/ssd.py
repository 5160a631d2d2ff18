"""Mamba-2 state-space duality (SSD) core: the selective scan with scalar-times-identity A.

Per head, with state ``h_t`` of shape (p, n)::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * outer(x_t, B_t)
    y_t = h_t @ C_t

Shapes (b batch, l length, h heads, p head dim, g groups, n state size, h % g == 0; head ``i``
reads group ``i // (h // g)``, as in mamba_ssm)::

    x (b, l, h, p)   dt (b, l, h) > 0 (already softplus'ed)   A (h,) < 0
    B, C (b, l, g, n)   initial_state (b, h, p, n) or None
    -> y (b, l, h, p) in x.dtype, h_last (b, h, p, n) float32

Implementations:
  * ``"scan"``: the sequential ``lax.scan`` of the recurrence above. O(l) sequential steps; the
    oracle every other implementation is tested against.
  * ``"xla"``: the chunked SSD algorithm (Dao & Gu, 2024) in pure ``jnp``: a quadratic
    attention-like product inside each chunk, one state per chunk, a short recurrence over
    chunk states, and a state-to-output product. All arithmetic in float32 (dt, cumulative
    sums and states always; bf16 inputs are upcast), masking before ``exp`` so the backward
    pass never sees ``0 * inf``. Its backward is hand-derived (``jax.custom_vjp``, the same
    derivation as the Pallas kernel's ``chunk_backward``): the forward keeps only the state
    entering each chunk, and the backward walks the chunks in reverse for the state cotangent
    and recomputes everything inside a chunk. Both run as a scan over blocks of a few chunks
    (``block_tokens``), which keeps each block's (chunk, chunk) intermediates cache-sized: the
    cost grows linearly with the length. Reverse mode only (as ``"pallas"``); forward-mode
    (``jax.jvp``, ``jax.jacfwd``) needs ``"scan"``.
  * ``"pallas"``: the Pallas kernel in ``pallas_kernels.ssd`` (same contract), partitioned over
    the current device mesh with ``shard_map`` (batch and heads; see ``mdm_jax.ssm.kernel``).
  * ``"auto"``: ``"pallas"`` on TPU/GPU, ``"xla"`` on CPU.

Any length works: the sequence is padded inside to whole chunks (for ``"xla"``, to its blocks
of whole chunks) with ``dt = 0``, which leaves the state untouched (decay ``exp(0) = 1``, input ``0``), so the final
state is exact. Every array argument is differentiable.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from einops import rearrange

from mdm_jax.ssm import kernel
from mdm_jax.ssm.contract import check_shapes

IMPLS = ("scan", "xla", "pallas", "auto")


def ssd_scan(x, dt, A, B, C, initial_state=None):
  """Sequential reference: one ``lax.scan`` step per token (float32 state)."""
  b, l, h, p, g, n = check_shapes(x, dt, A, B, C, initial_state)
  r = h // g
  f32 = jnp.float32
  # Expand groups to heads: head i uses group i // r.
  Bh = jnp.repeat(B.astype(f32), r, axis=2)  # (b, l, h, n)
  Ch = jnp.repeat(C.astype(f32), r, axis=2)
  h0 = (jnp.zeros((b, h, p, n), f32) if initial_state is None
        else initial_state.astype(f32))

  def step(state, inp):
    x_t, dt_t, B_t, C_t = inp  # (b,h,p), (b,h), (b,h,n), (b,h,n)
    decay = jnp.exp(dt_t * A.astype(f32))[..., None, None]
    state = decay * state + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
    y_t = jnp.einsum("bhpn,bhn->bhp", state, C_t)
    return state, y_t

  xs = (jnp.moveaxis(x.astype(f32), 1, 0), jnp.moveaxis(dt.astype(f32), 1, 0),
        jnp.moveaxis(Bh, 1, 0), jnp.moveaxis(Ch, 1, 0))
  h_last, ys = jax.lax.scan(step, h0, xs)
  return jnp.moveaxis(ys, 0, 1).astype(x.dtype), h_last


def _to_chunks(x, dt, A, B, C, q):
  """Lays one block's inputs (length a multiple of ``q``) out per chunk in float32, heads split
  as (group, heads-per-group)::

      x (b, c, g, q, r, p)   dt (b, c, g, r, q)   A (g, r)   B, C (b, c, g, q, n)

  x keeps its heads next to the head dim (for one group, a plain reshape), so that products
  with B, C and the states are single (q, n) x (n, r * p) matmuls per chunk.
  """
  g = B.shape[2]
  f32 = jnp.float32
  return (rearrange(x.astype(f32), "b (c q) (g r) p -> b c g q r p", q=q, g=g),
          rearrange(dt.astype(f32), "b (c q) (g r) -> b c g r q", q=q, g=g),
          rearrange(A.astype(f32), "(g r) -> g r", g=g),
          rearrange(B.astype(f32), "b (c q) g n -> b c g q n", q=q),
          rearrange(C.astype(f32), "b (c q) g n -> b c g q n", q=q))


def _chunk_decays(dtc, Ag):
  """Per-chunk decay factors from the log-decays ``a = dt * A``.

  Returns the masked intra-chunk decay ``exp(acum_t - acum_s)`` for t >= s else 0
  (b, c, g, r, q, q) with acum the inclusive cumulative log-decay, e_in = exp(acum) and
  e_out = exp(total - acum) as (b, c, g, q, r, 1) columns, and exp(total) (b, c, g, r). Every
  exponent is <= 0 (A < 0, dt >= 0).
  """
  q = dtc.shape[-1]
  acum = jnp.cumsum(dtc * Ag[:, :, None], axis=-1)
  total = acum[..., -1:]
  causal = jnp.tril(jnp.ones((q, q), dtype=bool))
  # Mask *before* exp: above the diagonal the segment sum is positive (would overflow) and
  # must contribute exactly zero to every cotangent.
  decay = jnp.exp(jnp.where(causal, acum[..., :, None] - acum[..., None, :], -jnp.inf))
  col = lambda v: rearrange(v, "b c g r q -> b c g q r")[..., None]
  return decay, col(jnp.exp(acum)), col(jnp.exp(total - acum)), jnp.exp(total[..., 0])


def _block_forward(x, dt, A, B, C, h0, q):
  """Forward of one block of chunks (length a multiple of ``q``), states as (b, g, n, r, p).

  Returns y (b, l, h, p) float32, the state leaving the block and the state entering each of
  its chunks, (b, c, g, n, r, p), which is all the backward keeps besides the inputs.
  """
  xc, dtc, Ag, Bc, Cc = _to_chunks(x, dt, A, B, C, q)
  decay, e_in, e_out, e_total = _chunk_decays(dtc, Ag)
  xdt = xc * rearrange(dtc, "b c g r q -> b c g q r")[..., None]   # dt_s x_s
  cb = jnp.einsum("bcgtn,bcgsn->bcgts", Cc, Bc)                      # once per group
  # 1. Intra-chunk: y_t = sum_{s<=t} exp(acum_t - acum_s) (C_t . B_s) dt_s x_s.
  y = jnp.einsum("bcgrts,bcgsrp->bcgtrp", cb[:, :, :, None] * decay, xdt)
  # 2. The state each chunk adds on its own, decayed to the chunk's end.
  states = jnp.einsum("bcgsn,bcgsrp->bcgnrp", Bc, xdt * e_out)

  # 3. Inter-chunk recurrence (c sequential steps of a (b, h, p, n) update).
  def pass_state(state, inp):
    s_c, d_c = inp
    return d_c[:, :, None, :, None] * state + s_c, state  # emit the state *entering* chunk c

  h_last, entering = jax.lax.scan(
      pass_state, h0, (jnp.moveaxis(states, 1, 0), jnp.moveaxis(e_total, 1, 0)))
  entering = jnp.moveaxis(entering, 0, 1)                           # (b, c, g, n, r, p)
  # 4. State-to-output: y_t += exp(acum_t) h_entering C_t.
  y = y + e_in * jnp.einsum("bcgtn,bcgnrp->bcgtrp", Cc, entering)
  return rearrange(y, "b c g t r p -> b (c t) (g r) p"), h_last, entering


def _block_backward(x, dt, A, B, C, entering, dy, dh_last, q):
  """Backward of one block: a reverse walk over its chunks carries the state cotangent, then
  everything inside a chunk is recomputed from the inputs and the chunk's entering state.

  Per chunk (one head; xdt_s = dt_s x_s, cb_ts = C_t . B_s, L_ts the masked decay, h the
  entering state, dh the cotangent of the leaving state, dy that of y)::

      m_ts   = L_ts (dy_t . xdt_s)
      dxdt_s = sum_t L_ts cb_ts dy_t + e_out_s dh B_s
      dC_t   = sum_s m_ts B_s + e_in_t h^T dy_t
      dB_s   = sum_t m_ts C_t + e_out_s dh^T xdt_s
      dh_in  = e_total dh + sum_t e_in_t outer(dy_t, C_t)
      dacum_t = sum_s m_ts cb_ts - sum_u m_ut cb_ut + e_in_t dy_t . (h C_t)
                - e_out_t xdt_t . (dh B_t)
      dtotal = e_total <dh, h> + sum_t e_out_t xdt_t . (dh B_t)
      da_u   = sum_{t>=u} dacum_t + dtotal          (a = dt A: ddt += da A, dA += sum da dt)

  dB and dC of a group also sum over the group's heads. Returns the cotangents of x, dt, A,
  B, C (float32, block shapes) and of the state entering the block.
  """
  xc, dtc, Ag, Bc, Cc = _to_chunks(x, dt, A, B, C, q)
  dyc = _to_chunks(dy, dt, A, B, C, q)[0]
  decay, e_in, e_out, e_total = _chunk_decays(dtc, Ag)
  dt_col = rearrange(dtc, "b c g r q -> b c g q r")[..., None]
  xdt = xc * dt_col
  xdt_out = xdt * e_out
  dy_in = dyc * e_in                                                # e_in_t dy_t
  cb = jnp.einsum("bcgtn,bcgsn->bcgts", Cc, Bc)

  # Cotangent of the state leaving each chunk: reverse recurrence dS_{c-1} = e_total_c dS_c
  # + sum_t e_in_t outer(dy_t, C_t) (the state-to-output term of chunk c).
  from_y = jnp.einsum("bcgtn,bcgtrp->bcgnrp", Cc, dy_in)

  def pass_cotangent(d, inp):
    f_c, e_c = inp
    return e_c[:, :, None, :, None] * d + f_c, d  # emit the cotangent of the state *leaving* c

  dh0, dleave = jax.lax.scan(
      pass_cotangent, dh_last, (jnp.moveaxis(from_y, 1, 0), jnp.moveaxis(e_total, 1, 0)),
      reverse=True)
  dleave = jnp.moveaxis(dleave, 0, 1)                               # (b, c, g, n, r, p)

  m = jnp.einsum("bcgtrp,bcgsrp->bcgrts", dyc, xdt) * decay
  mcb = m * cb[:, :, :, None]                                       # d(acum_t - acum_s)
  dh_b = jnp.einsum("bcgsn,bcgnrp->bcgsrp", Bc, dleave)             # dh B_s
  hc = jnp.einsum("bcgtn,bcgnrp->bcgtrp", Cc, entering)             # h C_t
  dxdt = jnp.einsum("bcgrts,bcgtrp->bcgsrp", cb[:, :, :, None] * decay, dyc) + e_out * dh_b
  dC = (jnp.einsum("bcgrts,bcgsn->bcgtn", m, Bc)
        + jnp.einsum("bcgtrp,bcgnrp->bcgtn", dy_in, entering))
  dB = (jnp.einsum("bcgrts,bcgtn->bcgsn", m, Cc)
        + jnp.einsum("bcgsrp,bcgnrp->bcgsn", xdt_out, dleave))

  row = lambda v: rearrange(v, "b c g q r -> b c g r q")
  # Sums over p as matrix-vector products: XLA's CPU reductions of a fused product over the
  # minor axis are several times slower.
  ones_p = jnp.ones((xc.shape[-1],), jnp.float32)
  psum = lambda a, b: row((a * b) @ ones_p)
  to_state = psum(xdt_out, dh_b)                                    # (b, c, g, r, q)
  dacum = jnp.sum(mcb, axis=-1) - jnp.sum(mcb, axis=-2) + psum(dy_in, hc) - to_state
  dtotal = (e_total * jnp.sum(dleave * entering, axis=(-3, -1))
            + jnp.sum(to_state, axis=-1))                           # (b, c, g, r)
  # acum is an inclusive cumsum of a: a_u feeds every acum_t with t >= u, and the total.
  da = jnp.flip(jnp.cumsum(jnp.flip(dacum, -1), axis=-1), -1) + dtotal[..., None]
  ddt = psum(dxdt, xc) + da * Ag[:, :, None]
  dA = rearrange(jnp.sum(da * dtc, axis=(0, 1, 4)), "g r -> (g r)")
  return (rearrange(dxdt * dt_col, "b c g q r p -> b (c q) (g r) p"),
          rearrange(ddt, "b c g r q -> b (c q) (g r)"), dA,
          rearrange(dB, "b c g q n -> b (c q) g n"), rearrange(dC, "b c g q n -> b (c q) g n"),
          dh0)


def _blocks(v, length, nb):
  """(b, l, ...) -> (nb, b, length / nb, ...), zero-padded to ``length`` (dt = 0 on padding:
  decay 1 and no input, so states pass through unchanged)."""
  v = jnp.pad(v, [(0, 0), (0, length - v.shape[1])] + [(0, 0)] * (v.ndim - 2))
  return jnp.moveaxis(v.reshape(v.shape[0], nb, length // nb, *v.shape[2:]), 1, 0)


def _unblocks(v, l):
  """Inverse of ``_blocks``: (nb, b, L, ...) -> (b, l, ...)."""
  v = jnp.moveaxis(v, 0, 1)
  return v.reshape(v.shape[0], -1, *v.shape[3:])[:, :l]


def _block_plan(l, q, block_tokens):
  """(blocks, padded length): blocks of whole chunks of at most ``block_tokens`` tokens (at
  least one chunk), as even as possible so that padding stays under one chunk per block."""
  chunks = -(-l // q)
  nb = max(1, -(-chunks // max(1, block_tokens // q)))
  return nb, nb * -(-chunks // nb) * q


def _chunked_forward(x, dt, A, B, C, h0, q, block_tokens):
  """Scan over blocks of chunks (each block's intermediates stay small), states carried as
  (b, g, n, r, p). Returns y (b, l, h, p) f32, h_last (b, h, p, n) and the per-chunk entering
  states (nb, b, c, g, n, r, p)."""
  l = x.shape[1]
  g = B.shape[2]
  nb, length = _block_plan(l, q, block_tokens)

  def block(h, inp):
    y, h, entering = _block_forward(*inp[:2], A, *inp[2:], h, q)
    return h, (y, entering)

  h0 = rearrange(h0.astype(jnp.float32), "b (g r) p n -> b g n r p", g=g)
  h_last, (y, entering) = jax.lax.scan(
      block, h0, tuple(_blocks(v, length, nb) for v in (x, dt, B, C)))
  return _unblocks(y, l), rearrange(h_last, "b g n r p -> b (g r) p n"), entering


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked(x, dt, A, B, C, h0, q, block_tokens):
  y, h_last, _ = _chunked_forward(x, dt, A, B, C, h0, q, block_tokens)
  return y.astype(x.dtype), h_last


def _chunked_fwd(x, dt, A, B, C, h0, q, block_tokens):
  y, h_last, entering = _chunked_forward(x, dt, A, B, C, h0, q, block_tokens)
  return (y.astype(x.dtype), h_last), (x, dt, A, B, C, entering)


def _chunked_bwd(q, block_tokens, residuals, cotangents):
  """Reverse scan over blocks carrying the cotangent of the state (``_block_backward``)."""
  x, dt, A, B, C, entering = residuals
  dy, dh_last = cotangents
  l = x.shape[1]
  g = B.shape[2]
  nb, length = _block_plan(l, q, block_tokens)

  def block(carry, inp):
    dh, dA = carry
    xb, dtb, Bb, Cb, eb, dyb = inp
    dxb, ddtb, dAb, dBb, dCb, dh = _block_backward(xb, dtb, A, Bb, Cb, eb, dyb, dh, q)
    return (dh, dA + dAb), (dxb, ddtb, dBb, dCb)

  dh_last = rearrange(dh_last.astype(jnp.float32), "b (g r) p n -> b g n r p", g=g)
  inputs = tuple(_blocks(v, length, nb) for v in (x, dt, B, C)) + (
      entering, _blocks(dy, length, nb))
  (dh0, dA), grads = jax.lax.scan(
      block, (dh_last, jnp.zeros(A.shape, jnp.float32)), inputs, reverse=True)
  dx, ddt, dB, dC = (_unblocks(v, l) for v in grads)
  dh0 = rearrange(dh0, "b g n r p -> b (g r) p n")
  return (dx.astype(x.dtype), ddt.astype(dt.dtype), dA.astype(A.dtype), dB.astype(B.dtype),
          dC.astype(C.dtype), dh0)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def ssd_chunked(x, dt, A, B, C, initial_state=None, *, chunk_size=64, block_tokens=256):
  """Chunked SSD in pure jnp with a hand-derived backward (see module docstring).

  Cost O(l * chunk_size) per head. A sequence shorter than ``chunk_size`` is one chunk of its
  own length (the same computation, without the padding). The chunks are processed in a scan
  over blocks of about ``block_tokens`` tokens so that the (chunk, chunk) intermediates of a
  block stay cache-sized; the result does not depend on it beyond float rounding.
  """
  b, l, h, p, g, n = check_shapes(x, dt, A, B, C, initial_state)
  if chunk_size < 1:
    raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
  h0 = (jnp.zeros((b, h, p, n), jnp.float32) if initial_state is None
        else initial_state.astype(jnp.float32))
  return _chunked(x, dt, A, B, C, h0, max(1, min(chunk_size, l)), block_tokens)


def resolve_impl(impl: str, backend: Optional[str] = None) -> str:
  """The implementation ``impl`` runs as: ``"auto"`` is ``"pallas"`` on TPU/GPU, else ``"xla"``.

  ``backend`` defaults to ``jax.default_backend()``.
  """
  if impl not in IMPLS:
    raise ValueError(f"ssd: unknown impl {impl!r}; choose one of {IMPLS}")
  if impl != "auto":
    return impl
  return "pallas" if (backend or jax.default_backend()) in ("tpu", "gpu") else "xla"


def ssd(x, dt, A, B, C, *, chunk_size: int = 64, initial_state: Optional[jax.Array] = None,
        impl: str = "auto", pallas_target: str = "auto"):
  """Selective state-space scan; see the module docstring for the contract.

  ``pallas_target`` picks the kernel when the impl is ``"pallas"`` (``mdm_jax.ssm.kernel``).
  Returns ``(y, h_last)``: y (b, l, h, p) in ``x.dtype``; h_last (b, h, p, n) float32.
  """
  impl = resolve_impl(impl)
  if impl == "scan":
    return ssd_scan(x, dt, A, B, C, initial_state)
  if impl == "xla":
    return ssd_chunked(x, dt, A, B, C, initial_state, chunk_size=chunk_size)
  return kernel.pallas_ssd(x, dt, A, B, C, initial_state, chunk_size=chunk_size,
                           target=pallas_target)
