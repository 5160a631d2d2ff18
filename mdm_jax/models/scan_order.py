"""Scan orders: which direction each layer scans image and text tokens (DiM-style switching).

The denoiser's sequence is ``[prefix | image tokens | text tokens]``. The prefix (time, class,
task and pad tokens) is never permuted and always comes first, so every layer sees the
conditioning before any content token. Layer ``l`` scans

  * image tokens, laid out on a (gh, gw) grid, in order ``l mod 4``:
      0 row-major, 1 row-major reversed, 2 column-major, 3 column-major reversed;
  * text tokens in order ``l mod 2``: 0 forward, 1 reversed.

A layer whose text order is reversed also scans the text segment *before* the image segment
(for image order 1 this is exactly the reversal of the whole content sequence). A causal scan
only carries information forward, so without this no image token could ever read the text:
text-to-image needs text -> image flow as much as captioning needs image -> text.

``directions=1`` is the paper's "1 scan direction" ablation: every layer uses order 0 (image
then text, both forward).
A layer permutes its input into its order, scans, and permutes back (``inverse``), so the
residual stream always stays in canonical (row-major, forward) order.

DiM's optional learnable padding tokens at row ends turn the grid into (gh, gw + 1): one
extra token after each row that tells the scan where a row ends; they are inserted before the
stack and dropped after it.

All permutations are static numpy arrays (known at trace time).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_ORDERS = ("row", "row_reversed", "column", "column_reversed")
TEXT_ORDERS = ("forward", "reversed")


def image_order(gh: int, gw: int, order: int) -> np.ndarray:
  """Permutation of the gh*gw row-major token indices for image order ``order`` (0..3).

  ``tokens[perm]`` lists the tokens in the order they are scanned.
  """
  if not 0 <= order < 4:
    raise ValueError(f"image order must be in 0..3 ({IMAGE_ORDERS}), got {order}")
  grid = np.arange(gh * gw).reshape(gh, gw)
  perm = grid.reshape(-1) if order < 2 else grid.T.reshape(-1)
  return perm[::-1].copy() if order % 2 else perm


def text_order(n: int, order: int) -> np.ndarray:
  """Permutation of n text token indices for text order ``order`` (0 forward, 1 reversed)."""
  if order not in (0, 1):
    raise ValueError(f"text order must be 0 or 1 ({TEXT_ORDERS}), got {order}")
  perm = np.arange(n)
  return perm[::-1].copy() if order else perm


def inverse(perm: np.ndarray) -> np.ndarray:
  """The permutation that undoes ``perm``: x[perm][inverse(perm)] == x."""
  inv = np.empty_like(perm)
  inv[perm] = np.arange(len(perm))
  return inv


def layer_orders(layer: int, directions: int = 4) -> tuple[int, int]:
  """(image order, text order) used by layer ``layer``."""
  if directions not in (1, 4):
    raise ValueError(f"directions must be 4 (the paper's model) or 1 (ablation), got {directions}")
  if directions == 1:
    return 0, 0
  return layer % 4, layer % 2


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
  """Where each kind of token sits in the denoiser's sequence.

  Attributes:
    n_prefix: prefix tokens (never permuted).
    grid: (gh, gw) image token grid, including row-end tokens if any; None for text-only.
    n_text: text tokens (0 for image-only).
  """
  n_prefix: int
  grid: Optional[tuple[int, int]]
  n_text: int

  @property
  def n_image(self) -> int:
    return 0 if self.grid is None else self.grid[0] * self.grid[1]

  @property
  def length(self) -> int:
    return self.n_prefix + self.n_image + self.n_text

  def permutation(self, image_ord: int, text_ord: int) -> np.ndarray:
    """Permutation of the whole sequence: prefix fixed and first; then image and text, each in
    its order, with the text segment first when the text order is reversed."""
    image = (self.n_prefix + image_order(*self.grid, image_ord) if self.grid is not None
             else np.zeros((0,), np.int64))
    text = self.n_prefix + self.n_image + text_order(self.n_text, text_ord)
    content = [text, image] if text_ord == 1 else [image, text]
    return np.concatenate([np.arange(self.n_prefix)] + content).astype(np.int32)

  def segments(self) -> np.ndarray:
    """(length,) int32 segment id of each position: 0 prefix, 1 image, 2 text."""
    return np.repeat(np.arange(3, dtype=np.int32), [self.n_prefix, self.n_image, self.n_text])

  def schedule(self, directions: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per-order permutations and inverses, (period, length) each; layer l uses row l % period.

    The schedule repeats with period 4 (lcm of 4 image and 2 text orders); 1 for one direction.
    """
    period = 1 if directions == 1 else 4
    perms = np.stack([self.permutation(*layer_orders(l, directions)) for l in range(period)])
    invs = np.stack([inverse(p) for p in perms])
    return perms, invs


def permute(x: jax.Array, perm) -> jax.Array:
  """Reorder tokens: x (b, L, ...) -> x[:, perm]. ``perm`` may be traced (per-layer index)."""
  return jnp.take(x, perm, axis=1)


def insert_row_end_tokens(image_tokens: jax.Array, pad: jax.Array, gh: int, gw: int):
  """(b, gh*gw, d) + pad (d,) -> (b, gh*(gw+1), d): a pad token after every row (DiM)."""
  b, n, d = image_tokens.shape
  if n != gh * gw:
    raise ValueError(f"expected {gh}x{gw}={gh * gw} image tokens, got {n}")
  grid = image_tokens.reshape(b, gh, gw, d)
  pads = jnp.broadcast_to(pad.astype(image_tokens.dtype), (b, gh, 1, d))
  return jnp.concatenate([grid, pads], axis=2).reshape(b, gh * (gw + 1), d)


def remove_row_end_tokens(image_tokens: jax.Array, gh: int, gw: int):
  """Inverse of ``insert_row_end_tokens``: (b, gh*(gw+1), d) -> (b, gh*gw, d)."""
  b, _, d = image_tokens.shape
  return image_tokens.reshape(b, gh, gw + 1, d)[:, :, :gw].reshape(b, gh * gw, d)
