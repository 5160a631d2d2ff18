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
    pass never sees ``0 * inf``.
  * ``"pallas"``: the Pallas kernel in ``pallas_kernels.ssd`` (same contract), partitioned over
    the current device mesh with ``shard_map`` (batch and heads; see ``mdm_jax.ssm.kernel``).
  * ``"auto"``: ``"pallas"`` on TPU/GPU, ``"xla"`` on CPU.

Any length works: the sequence is padded inside to a multiple of the chunk size with
``dt = 0``, which leaves the state untouched (decay ``exp(0) = 1``, input ``0``), so the final
state is exact. Every array argument is differentiable.
"""
from __future__ import annotations

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


def ssd_chunked(x, dt, A, B, C, initial_state=None, *, chunk_size=64):
  """Chunked SSD in pure jnp (see module docstring). Cost O(l * chunk_size) per head."""
  b, l, h, p, g, n = check_shapes(x, dt, A, B, C, initial_state)
  if chunk_size < 1:
    raise ValueError(f"ssd: chunk_size must be >= 1, got {chunk_size}")
  r = h // g
  q = chunk_size
  f32 = jnp.float32
  pad = (-l) % q
  if pad:
    # dt = 0 on padding: decay 1 and zero input, so states pass through unchanged.
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    dt = jnp.pad(dt, ((0, 0), (0, pad), (0, 0)))
    B = jnp.pad(B, ((0, 0), (0, pad), (0, 0), (0, 0)))
    C = jnp.pad(C, ((0, 0), (0, pad), (0, 0), (0, 0)))
  # Heads split as (group, heads-per-group) so C.B^T is formed once per group, not per head.
  xc = rearrange(x.astype(f32), "b (c q) (g r) p -> b c q g r p", q=q, g=g)
  dtc = rearrange(dt.astype(f32), "b (c q) (g r) -> b c g r q", q=q, g=g)
  Bc = rearrange(B.astype(f32), "b (c q) g n -> b c q g n", q=q)
  Cc = rearrange(C.astype(f32), "b (c q) g n -> b c q g n", q=q)
  Ag = rearrange(A.astype(f32), "(g r) -> g r", g=g)

  a = dtc * Ag[:, :, None]                   # (b, c, g, r, q)  log-decay per step
  acum = jnp.cumsum(a, axis=-1)              # inclusive cumulative log-decay in the chunk
  xdt = xc * rearrange(dtc, "b c g r q -> b c q g r")[..., None]  # dt_s * x_s

  # 1. Intra-chunk (diagonal blocks): y[t] = sum_{s<=t} exp(acum_t - acum_s) (C_t.B_s) dt_s x_s.
  causal = jnp.tril(jnp.ones((q, q), dtype=bool))
  seg = acum[..., :, None] - acum[..., None, :]                  # (b, c, g, r, t, s)
  decay = jnp.exp(jnp.where(causal, seg, -jnp.inf))              # mask *before* exp
  cb = jnp.einsum("bctgn,bcsgn->bcgts", Cc, Bc)                  # once per group
  y = jnp.einsum("bcgts,bcgrts,bcsgrp->bctgrp", cb, decay, xdt)

  # 2. State contributed by each chunk alone (decayed to the chunk's end).
  decay_to_end = jnp.exp(acum[..., -1:] - acum)                  # (b, c, g, r, q)
  chunk_states = jnp.einsum("bcsgn,bcgrs,bcsgrp->bcgrpn", Bc, decay_to_end, xdt)

  # 3. Inter-chunk recurrence over chunk states (c sequential steps of a (b,h,p,n) update).
  chunk_decay = jnp.exp(acum[..., -1])                           # (b, c, g, r)
  h0 = (jnp.zeros((b, g, r, p, n), f32) if initial_state is None
        else rearrange(initial_state.astype(f32), "b (g r) p n -> b g r p n", g=g))

  def pass_state(state, inp):
    s_c, d_c = inp
    return d_c[..., None, None] * state + s_c, state  # emit the state *entering* chunk c

  h_last, entering = jax.lax.scan(
      pass_state, h0, (jnp.moveaxis(chunk_states, 1, 0), jnp.moveaxis(chunk_decay, 1, 0)))
  entering = jnp.moveaxis(entering, 0, 1)                        # (b, c, g, r, p, n)

  # 4. State-to-output: y[t] += exp(acum_t) C_t . h_entering.
  y = y + jnp.einsum("bctgn,bcgrt,bcgrpn->bctgrp", Cc, jnp.exp(acum), entering)

  y = rearrange(y, "b c t g r p -> b (c t) (g r) p")[:, :l]
  return y.astype(x.dtype), rearrange(h_last, "b g r p n -> b (g r) p n")


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
