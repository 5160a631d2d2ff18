"""The SSD contract's shapes, shared by every implementation (``mdm_jax.ssm.ssd`` and the
Pallas kernel in ``pallas_kernels.ssd``); a leaf module so neither imports the other.

    x (b, l, h, p)   dt (b, l, h)   A (h,)   B, C (b, l, g, n), h % g == 0
    initial_state (b, h, p, n) or None
"""
from __future__ import annotations


def check_shapes(x, dt, A, B, C, initial_state):
  """Validates the contract's shapes; returns (b, l, h, p, g, n)."""
  if x.ndim != 4:
    raise ValueError(f"ssd: x must be (batch, length, heads, headdim), got shape {x.shape}")
  b, l, h, p = x.shape
  if dt.shape != (b, l, h):
    raise ValueError(f"ssd: dt must be (batch, length, heads) = {(b, l, h)}, got {dt.shape}")
  if A.shape != (h,):
    raise ValueError(f"ssd: A must be (heads,) = {(h,)}, got {A.shape}")
  if B.ndim != 4 or B.shape[:2] != (b, l) or B.shape != C.shape:
    raise ValueError(
        f"ssd: B and C must both be (batch, length, groups, state) with batch, length = {(b, l)};"
        f" got B {B.shape}, C {C.shape}")
  g, n = B.shape[2], B.shape[3]
  if h % g:
    raise ValueError(f"ssd: heads ({h}) must be a multiple of groups ({g})")
  if initial_state is not None and initial_state.shape != (b, h, p, n):
    raise ValueError(
        f"ssd: initial_state must be (batch, heads, headdim, state) = {(b, h, p, n)},"
        f" got {initial_state.shape}")
  return b, l, h, p, g, n
