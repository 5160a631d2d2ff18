"""Video metrics of a clip model, as pure functions of clips and text (no network, no data).

A clip is (T, H, W[, C]) frames of one bright digit on a dark canvas (the bundled moving
digits); a batch of clips is (N, T, H, W[, C]), uint8 in [0, 255] or float in [-1, 1] (the
model's range). The readings:

  * ``frame_windows`` / ``read_digits``: the bundled digits classifier (8x8 images) reads each
    frame through the 8x8 window centred on the bounding box of the frame's ink (rounded up
    and left, where the training digits' ink sits when it is narrower than 8 pixels); the
    clip's digit is the majority over its frames with ink (ties: the smaller digit).
  * ``temporally_consistent``: every frame of the clip has ink and reads the same digit.
  * ``centres_of_mass`` / ``velocities`` / ``motion_directions``: the ink's centre of mass per
    frame, its least-squares velocity over the frames (pixels a frame; exactly the motion of a
    digit moved at constant speed), and the direction whose unit step has the sign of the
    velocity's dominant axis. A still clip (speed under ``min_speed``) or one with fewer than
    two frames with ink reads ``STILL`` (-1), which matches no direction.
  * ``caption_reading`` / ``caption_accuracy``: the digit and the direction a text names.
  * ``frame_error``: MSE and PSNR of generated frames against the true ones, on the generated
    frames only.

The direction vocabulary (names and unit steps) is the data's (``data.moving_digits``
``DIRECTIONS`` / ``DIRECTION_STEPS``) and is passed in, so that it has one home.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from mdm_jax.evaluation import digits_classifier, multimodal

STILL = -1           # the direction of a clip that does not move (or shows no ink)
NO_DIGIT = -1        # the digit of a frame (or clip) with no ink
# Ink intensity in [0, 1] above which a pixel is the digit's, not background: the digits' faint
# strokes (1/16 .. 2/16) are left out, which moves no window on the true clips, and background
# noise of std 0.05 (0.1 in the model's [-1, 1]) stays under it (a threshold of 0.1 reads 13% of
# such clips right, 0.15 reads 94%).
INK_THRESHOLD = 0.15
MIN_SPEED = 0.25     # pixels a frame under which a clip counts as still
WINDOW = digits_classifier.IMAGE_SHAPE[0]   # the classifier reads 8x8 images


def ink(clips) -> np.ndarray:
  """float64 (N, T, H, W) in [0, 1]: the brightness of each pixel (the channels' mean).

  Args:
    clips: (N, T, H, W) or (N, T, H, W, C); uint8 in [0, 255] or float in [-1, 1].
  """
  return ink_channels(clips).mean(axis=-1)


def _bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """First and last True index along the last axis of bool (..., L); (L, -1) where none."""
  idx = np.arange(mask.shape[-1])
  return (np.where(mask, idx, mask.shape[-1]).min(-1), np.where(mask, idx, -1).max(-1))


def frame_windows(clips, *, threshold: float = INK_THRESHOLD):
  """The 8x8 window of each frame that the digits classifier reads.

  The window is centred on the bounding box of the frame's ink (pixels brighter than
  ``threshold``), rounded up and left (the training digits fill all 8 rows, and their ink sits
  one column left of centre when it is 6 columns wide, the most common width), then kept
  inside the frame. On the held-out moving digits the classifier reads 94.9% of the frames
  right this way (97.6% at the digits' true positions), and 94.3% of the clips with background
  noise of std 0.1 (in [-1, 1]) added.

  Returns:
    (windows float32 (N, T, 8, 8, 1) in [-1, 1], has_ink bool (N, T)).
  """
  x = ink(clips)
  n, t, h, w = x.shape
  if h < WINDOW or w < WINDOW:
    raise ValueError(f"frames of {h}x{w} are smaller than the digits classifier's "
                     f"{WINDOW}x{WINDOW} images")
  bright = x > threshold
  has_ink = bright.any(axis=(2, 3))
  r_lo, r_hi = _bounds(bright.any(axis=3))
  c_lo, c_hi = _bounds(bright.any(axis=2))
  # floor(centre - 3.5) = floor((lo + hi + 1) / 2) - 4; an empty frame is read at the centre.
  top = np.where(has_ink, (r_lo + r_hi + 1) // 2 - WINDOW // 2, (h - WINDOW) // 2)
  left = np.where(has_ink, (c_lo + c_hi + 1) // 2 - WINDOW // 2, (w - WINDOW) // 2)
  top, left = np.clip(top, 0, h - WINDOW), np.clip(left, 0, w - WINDOW)
  offsets = np.arange(WINDOW)
  rows = (top[..., None] + offsets)[..., :, None]             # (n, t, 8, 1)
  cols = (left[..., None] + offsets)[..., None, :]            # (n, t, 1, 8)
  frames = np.arange(t)[None, :, None, None]
  windows = x[np.arange(n)[:, None, None, None], frames, rows, cols]
  return (windows * 2.0 - 1.0).astype(np.float32)[..., None], has_ink


def read_frames(params, clips, *, threshold: float = INK_THRESHOLD) -> np.ndarray:
  """int32 (N, T): the digit the classifier (``params``) reads in each frame's window
  (``frame_windows``); ``NO_DIGIT`` for a frame without ink."""
  windows, has_ink = frame_windows(clips, threshold=threshold)
  n, t = has_ink.shape
  read = digits_classifier.digits_predict(params, windows.reshape(n * t, WINDOW, WINDOW, 1))
  return np.where(has_ink, read.reshape(n, t), NO_DIGIT).astype(np.int32)


def clip_digits(frame_digits: np.ndarray, num_classes: int = 10) -> np.ndarray:
  """int32 (N,): each clip's majority digit over its frames with ink (ties: the smaller
  digit), ``NO_DIGIT`` for a clip without ink. ``frame_digits``: int (N, T) from
  ``read_frames``."""
  d = np.asarray(frame_digits)
  counts = np.stack([(d == k).sum(axis=1) for k in range(num_classes)], axis=1)
  return np.where(counts.any(axis=1), counts.argmax(axis=1), NO_DIGIT).astype(np.int32)


def temporally_consistent(frame_digits: np.ndarray) -> np.ndarray:
  """bool (N,): every frame has ink and reads the same digit. ``frame_digits``: int (N, T)."""
  d = np.asarray(frame_digits)
  return (d[:, :1] != NO_DIGIT)[:, 0] & (d == d[:, :1]).all(axis=1)


def centres_of_mass(clips, *, threshold: float = INK_THRESHOLD) -> np.ndarray:
  """float64 (N, T, 2): the (row, col) centre of each frame's ink (pixels brighter than
  ``threshold``, weighted by brightness); NaN for a frame without ink."""
  x = ink(clips)
  x = np.where(x > threshold, x, 0.0)
  mass = x.sum(axis=(2, 3))
  rows = (x.sum(axis=3) * np.arange(x.shape[2])).sum(axis=2)
  cols = (x.sum(axis=2) * np.arange(x.shape[3])).sum(axis=2)
  with np.errstate(invalid="ignore", divide="ignore"):
    centre = np.stack([rows / mass, cols / mass], axis=-1)
  return np.where((mass > 0)[..., None], centre, np.nan)


def velocities(centres: np.ndarray) -> np.ndarray:
  """float64 (N, 2): the least-squares slope (rows, cols a frame) of each clip's centres of mass
  over time, from its frames with ink; NaN for a clip with fewer than two. ``centres``:
  (N, T, 2) from ``centres_of_mass``."""
  c = np.asarray(centres, np.float64)
  ok = ~np.isnan(c[..., 0])                                    # (N, T)
  t = np.arange(c.shape[1], dtype=np.float64)[None]
  count = ok.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    t_mean = np.where(ok, t, 0).sum(axis=1) / count
    dt = np.where(ok, t - t_mean[:, None], 0.0)                # (N, T)
    c_mean = np.where(ok[..., None], c, 0).sum(axis=1) / count[:, None]
    dc = np.where(ok[..., None], c - c_mean[:, None], 0.0)
    slope = (dt[..., None] * dc).sum(axis=1) / (dt ** 2).sum(axis=1)[:, None]
  return np.where((count >= 2)[:, None], slope, np.nan)


def motion_directions(clips, steps: Sequence[tuple[int, int]], *,
                      threshold: float = INK_THRESHOLD,
                      min_speed: float = MIN_SPEED) -> np.ndarray:
  """int32 (N,): each clip's direction of motion, an index into ``steps``; ``STILL`` (-1) for a
  clip slower than ``min_speed`` pixels a frame or with fewer than two frames with ink.

  Args:
    clips: (N, T, H, W[, C]), uint8 or float in [-1, 1].
    steps: the (drow, dcol) unit step of each direction (row 0 is the top), e.g.
      ``data.moving_digits.DIRECTION_STEPS``; each moves along one axis.
  """
  steps = np.asarray(steps)
  if steps.ndim != 2 or steps.shape[1] != 2 or ((steps != 0).sum(axis=1) != 1).any():
    raise ValueError(f"steps must be (drow, dcol) unit steps along one axis each, got "
                     f"{steps.tolist()}")
  v = velocities(centres_of_mass(clips, threshold=threshold))
  speed = np.abs(v)
  moving = np.nan_to_num(speed.max(axis=1), nan=0.0) >= min_speed
  axis = np.nan_to_num(speed, nan=0.0).argmax(axis=1)          # the dominant axis
  sign = np.sign(np.take_along_axis(np.nan_to_num(v), axis[:, None], axis=1)[:, 0])
  out = np.full(len(v), STILL, np.int32)
  for k, step in enumerate(steps):
    a = int(np.flatnonzero(step)[0])
    out[moving & (axis == a) & (sign == np.sign(step[a]))] = k
  return out


def direction_named(text: str, direction_words: Sequence[str]) -> int | None:
  """The one direction ``text`` names (an index into ``direction_words``, e.g.
  ``data.text_templates.MOTION_DIRECTIONS``); None when it names none or several."""
  words = set(re.findall(r"[a-z]+", text.lower()))
  named = [k for k, w in enumerate(direction_words) if w in words]
  return named[0] if len(named) == 1 else None


def caption_reading(text: str, direction_words: Sequence[str]) -> tuple[int | None, int | None]:
  """(the one digit, the one direction) ``text`` names; None for either when it names none or
  several (digits as words or numerals, ``multimodal.digit_named``)."""
  return multimodal.digit_named(text), direction_named(text, direction_words)


def caption_accuracy(texts: Sequence[str], digits, directions,
                     direction_words: Sequence[str]) -> dict[str, float]:
  """How many texts name their clip's digit and direction (and no other).

  Args:
    texts: n captions; digits, directions: int (n,) each clip's digit and direction (an index
      into ``direction_words``).
  Returns:
    {"digit": fraction naming the digit, "direction": naming the direction, "both": naming
    both}.
  """
  digits, directions = np.asarray(digits), np.asarray(directions)
  if not len(texts) or len(texts) != len(digits) or len(texts) != len(directions):
    raise ValueError(f"give one digit and one direction per text (non-empty), got "
                     f"{len(texts)} texts, {len(digits)} digits, {len(directions)} directions")
  read = [caption_reading(t, direction_words) for t in texts]
  digit_ok = np.asarray([d == int(w) for (d, _), w in zip(read, digits)])
  dir_ok = np.asarray([m == int(w) for (_, m), w in zip(read, directions)])
  return {"digit": float(digit_ok.mean()), "direction": float(dir_ok.mean()),
          "both": float((digit_ok & dir_ok).mean())}


def frame_error(generated, truth, generated_frames) -> dict[str, float]:
  """The error of generated frames against the true ones, on the generated frames only.

  Args:
    generated, truth: (N, T, H, W[, C]) clips of the same shape, uint8 in [0, 255] or float in
      [-1, 1] (each converted to [0, 1]).
    generated_frames: bool (T,), True for the frames that were generated (not given).
  Returns:
    {"mse": mean squared error per pixel in [0, 1] units over every generated frame,
     "psnr": mean over clips of 10 log10(1 / that clip's MSE) in dB (inf for a clip generated
     exactly)}.
  """
  g, t = ink_channels(generated), ink_channels(truth)
  if g.shape != t.shape:
    raise ValueError(f"generated clips {g.shape} and true clips {t.shape} differ in shape")
  frames = np.asarray(generated_frames, bool)
  if frames.shape != (g.shape[1],) or not frames.any():
    raise ValueError(f"generated_frames must be bool ({g.shape[1]},) with at least one True, "
                     f"got {frames.tolist()}")
  err = (g[:, frames] - t[:, frames]) ** 2
  per_clip = err.reshape(len(err), -1).mean(axis=1)
  with np.errstate(divide="ignore"):
    psnr = 10.0 * np.log10(1.0 / per_clip)
  return {"mse": float(per_clip.mean()), "psnr": float(psnr.mean())}


def ink_channels(clips) -> np.ndarray:
  """float64 (N, T, H, W, C) in [0, 1] of clips (N, T, H, W[, C]), uint8 in [0, 255] or float
  in [-1, 1] (clipped)."""
  x = np.asarray(clips)
  if x.ndim == 4:
    x = x[..., None]
  if x.ndim != 5:
    raise ValueError(f"clips must be (N, T, H, W) or (N, T, H, W, C), got shape {x.shape}")
  if x.dtype == np.uint8:
    return x.astype(np.float64) / 255.0
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"clips must be uint8 in [0, 255] or float in [-1, 1], got {x.dtype}")
  return np.clip((x.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
