"""Scan orders: which direction each layer scans image, clip and text tokens (DiM-style switching).

The denoiser's sequence is ``[prefix | image tokens | text tokens]``. The prefix (time, class,
task and pad tokens) is never permuted and always comes first, so every layer sees the
conditioning before any content token.

Images. Layer ``l`` scans

  * image tokens, laid out on a (gh, gw) grid, in order ``l mod 4``:
      0 row-major, 1 row-major reversed, 2 column-major, 3 column-major reversed;
  * text tokens in order ``l mod 2``: 0 forward, 1 reversed.

A layer whose text order is reversed also scans the text segment *before* the image segment.
A causal scan only carries information forward, so without this no image token could ever read
the text: text-to-image needs text -> image flow as much as captioning needs image -> text.
Odd layers pair a reversed image order with reversed text, so layer ``2k + 1`` scans exactly
the reversal of layer ``2k``'s content: every token gets the other half of its context one
layer later.

Clips. A clip is ``frames`` (T) frames on the same (gh, gw) grid, laid out time-major: frame
after frame, each frame row-major (token ``t*gh*gw + r*gw + c``). An image is a clip of one
frame. The clip orders are

  0 frame-major row:       frames 0..T-1, each frame row-major;
  1 its exact reversal:    frames T-1..0, each frame row-major reversed;
  2 frame-major column:    frames 0..T-1, each frame column-major;
  3 its exact reversal;
  4 time-major:            positions row-major, each position through frames 0..T-1
                           ((0,0) at t=0..T-1, then (0,1) at t=0..T-1, ...);
  5 its exact reversal.

Orders 0-3 are the image orders applied to every frame, frames in time order (reversed in
time for the reversed orders, so a reversed scan is the exact reversal). In those orders the
same position of two neighbouring frames is a whole frame (gh*gw tokens) apart, so the SSM's
decaying state carries little from one frame's token to the next frame's. The time-major orders
put a position's past and future frames next to each other, the neighbourhood motion lives in;
forward and reversed, since a causal scan only carries information forward (from past frames
in order 4, from future ones in order 5). With ``frames > 1`` layer ``l`` uses clip order
``l mod 6`` and text order ``l mod 2``: the schedule's period is 6 (lcm of 6 clip and 2 text
orders; 4 for images), and the odd layers are still the exact reversals of the even ones.
``time_orders=False`` is the frame-by-frame ablation: clip orders ``l mod 4`` only (period 4).
For one frame the time-major order is the row-major order and is never scheduled, so an image's
permutations and schedule are those of the 4 image orders whatever ``time_orders`` says.

``directions=1`` is the paper's "1 scan direction" ablation: every layer uses order 0 (image
or clip, then text, both forward).
A layer permutes its input into its order, scans, and permutes back (``inverse``), so the
residual stream always stays in canonical (time-major, row-major, forward) order.

DiM's optional learnable padding tokens at row ends turn the grid into (gh, gw + 1): one
extra token after each row that tells the scan where a row ends; they are inserted before the
stack and dropped after it. A time-major clip is ``frames * gh`` rows of ``gw`` tokens, so the
same functions insert and drop them in a clip (pass ``frames * gh`` as the row count), and its
layout's per-frame grid is (gh, gw + 1).

All permutations are static numpy arrays (known at trace time).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_ORDERS = ("row", "row_reversed", "column", "column_reversed")
CLIP_ORDERS = IMAGE_ORDERS + ("time", "time_reversed")
TEXT_ORDERS = ("forward", "reversed")


def clip_order(frames: int, gh: int, gw: int, order: int) -> np.ndarray:
  """Permutation of the frames*gh*gw time-major token indices for clip order ``order`` (0..5).

  ``tokens[perm]`` lists the tokens in the order they are scanned (``CLIP_ORDERS``; the module
  docstring describes each).
  """
  if not 0 <= order < len(CLIP_ORDERS):
    raise ValueError(f"clip order must be in 0..5 ({CLIP_ORDERS}), got {order}")
  if frames < 1:
    raise ValueError(f"a clip has at least one frame, got frames={frames}")
  grid = np.arange(frames * gh * gw).reshape(frames, gh, gw)
  axes = ((0, 1, 2), (0, 2, 1), (1, 2, 0))[order // 2]  # frame-major row / column, time-major
  perm = grid.transpose(axes).reshape(-1)
  return perm[::-1].copy() if order % 2 else perm


def image_order(gh: int, gw: int, order: int) -> np.ndarray:
  """Permutation of the gh*gw row-major token indices for image order ``order`` (0..3).

  ``tokens[perm]`` lists the tokens in the order they are scanned.
  """
  if not 0 <= order < 4:
    raise ValueError(f"image order must be in 0..3 ({IMAGE_ORDERS}), got {order}")
  return clip_order(1, gh, gw, order)


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


def schedule_period(directions: int = 4, frames: int = 1, time_orders: bool = True) -> int:
  """Layers after which the order schedule repeats: 1 (one direction), 4 (images, or clips
  without time-major orders) or 6 (clips with them)."""
  if directions not in (1, 4):
    raise ValueError(f"directions must be 4 (the paper's model) or 1 (ablation), got {directions}")
  if frames < 1:
    raise ValueError(f"a clip has at least one frame, got frames={frames}")
  if directions == 1:
    return 1
  return 6 if frames > 1 and time_orders else 4


def layer_orders(layer: int, directions: int = 4, frames: int = 1,
                 time_orders: bool = True) -> tuple[int, int]:
  """(image or clip order, text order) used by layer ``layer``.

  ``frames`` > 1 schedules the time-major clip orders too unless ``time_orders`` is False (the
  frame-by-frame ablation); for one frame the result is the image schedule either way.
  """
  period = schedule_period(directions, frames, time_orders)
  return layer % period, layer % min(period, 2)


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
  """Where each kind of token sits in the denoiser's sequence.

  Attributes:
    n_prefix: prefix tokens (never permuted).
    grid: (gh, gw) token grid of one frame, including row-end tokens if any; None for
      text-only.
    n_text: text tokens (0 for image-only).
    frames: frames of a clip, laid out time-major (1: an image).
  """
  n_prefix: int
  grid: Optional[tuple[int, int]]
  n_text: int
  frames: int = 1

  def __post_init__(self):
    if self.frames < 1:
      raise ValueError(f"a clip has at least one frame, got frames={self.frames}")
    if self.frames > 1 and self.grid is None:
      raise ValueError(f"frames={self.frames} needs a grid: a text-only layout has no frames; "
                       "pass the frame's (gh, gw) grid or frames=1")

  @property
  def n_image(self) -> int:
    return 0 if self.grid is None else self.frames * self.grid[0] * self.grid[1]

  @property
  def length(self) -> int:
    return self.n_prefix + self.n_image + self.n_text

  def permutation(self, image_ord: int, text_ord: int) -> np.ndarray:
    """Permutation of the whole sequence: prefix fixed and first; then image (or clip) and
    text, each in its order, with the text segment first when the text order is reversed."""
    if self.frames == 1 and image_ord >= 4:
      raise ValueError(f"image order must be in 0..3 ({IMAGE_ORDERS}) for one frame, got "
                       f"{image_ord}; the time-major orders need frames > 1")
    image = (self.n_prefix + clip_order(self.frames, *self.grid, image_ord)
             if self.grid is not None else np.zeros((0,), np.int64))
    text = self.n_prefix + self.n_image + text_order(self.n_text, text_ord)
    content = [text, image] if text_ord == 1 else [image, text]
    return np.concatenate([np.arange(self.n_prefix)] + content).astype(np.int32)

  def segments(self) -> np.ndarray:
    """(length,) int32 segment id of each position: 0 prefix, 1 image, 2 text."""
    return np.repeat(np.arange(3, dtype=np.int32), [self.n_prefix, self.n_image, self.n_text])

  def schedule(self, directions: int = 4,
               time_orders: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-order permutations and inverses, (period, length) each; layer l uses row l % period.

    The period is ``schedule_period``: 4 for images (lcm of 4 image and 2 text orders), 6 for
    clips with time-major orders, 1 for one direction.
    """
    period = schedule_period(directions, self.frames, time_orders)
    perms = np.stack([
        self.permutation(*layer_orders(l, directions, self.frames, time_orders))
        for l in range(period)])
    invs = np.stack([inverse(p) for p in perms])
    return perms, invs


def permute(x: jax.Array, perm) -> jax.Array:
  """Reorder tokens: x (b, L, ...) -> x[:, perm]. ``perm`` may be traced (per-layer index)."""
  return jnp.take(x, perm, axis=1)


def insert_row_end_tokens(image_tokens: jax.Array, pad: jax.Array, gh: int, gw: int):
  """(b, gh*gw, d) + pad (d,) -> (b, gh*(gw+1), d): a pad token after every row (DiM).

  For a time-major clip of T frames pass ``gh = T * frame rows``.
  """
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
