"""The bundled default video dataset: one handwritten digit moving on a larger canvas.

Each clip is ``frames`` frames of a ``canvas`` x ``canvas`` black canvas with one bundled 8x8
digit (`data.digits`) pasted on it, moved by ``speed`` pixels a frame in one of four directions
(`text_templates.MOTION_DIRECTIONS`: up, down, left, right). The digit stays whole on the
canvas for the whole clip: every clip has one direction of motion, the one its captions and VQA
answers name and the one a centre-of-mass reading of its frames measures (a clip that bounced
off an edge would move both ways). ``speed`` is drawn from 1 up to the fastest that fits (1 on
the default 16x16 canvas with 8 frames; up to 2 on 24x24).

Where the digit travels is the ``path`` (`PATHS`):

* ``"centred"`` (the default): across the motion the digit sits at the canvas centre, and its
  path along the motion is centred too, so a clip is fixed by its image, direction and speed.
  On the default canvas every frame's digit is then aligned with the 4-pixel token grid across
  the motion, and with the default 8 frames (speed 1) the digits of one direction pass through
  the same positions.
* ``"random"``: the start is drawn, across the motion anywhere on the canvas and along it
  anywhere the whole path fits, so the digit lands at any offset from the token grid.

The default is centred because the laptop model does not learn to read a digit that can sit
anywhere: trained 1800 captioning steps on still digits at random places of the 16x16 canvas,
it names the digit of its own training clips at chance, while the same digits at one place
are named 0.89 of the time (docs/results.md, "Why the video run misses the digit"). The random
path is the harder dataset for a model with the budget to learn a position-invariant reading.

Clip ``i`` of a split is made from source image ``i % n`` of the digits split (n images, so
every image is used ``clips_per_image`` times) and its ``i // n``-th direction in a cycle
through the four directions that starts at a per-image random offset: with a multiple of 4
clips per image every image moves in every direction once per 4 clips, so neither the digit nor
the image predicts the direction. The offset, the speed and (on the random path) the start come
from numpy generators seeded by (seed, split, image or clip index): a clip is fixed by the seed,
the split and its index, nothing is downloaded. The held-out split uses only the digits test split's
images, so held-out clips show handwriting the training clips never do.

Text comes from the label and the direction (`text_templates.video_captions`, `video_qa`).
`open_moving_digits` hands a split to the data pipeline (`data.pipeline`, dataset
"moving_digits") as an `ExampleSource` of clips, whose label-made text is keyed by
(label, direction) (`text_key`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from data import digits
from data import source as source_lib
from data import text_templates

DIRECTIONS = text_templates.MOTION_DIRECTIONS
# (drow, dcol) per pixel of speed, one per entry of DIRECTIONS (row 0 is the top).
DIRECTION_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))
NUM_CLASSES = digits.NUM_CLASSES
SPLITS = digits.SPLITS
DIGIT_SIZE = 8
DEFAULT_FRAMES = 8
DEFAULT_CANVAS = 16
DEFAULT_CLIPS_PER_IMAGE = 4
PATHS = ("centred", "random")
DEFAULT_PATH = "centred"


@dataclasses.dataclass(frozen=True)
class Clips:
  """A split of moving-digit clips (N clips of T frames on an H x W = canvas x canvas grid).

  Attributes:
    videos: uint8 (N, T, H, W, 1) in [0, 255], ink bright on black.
    labels: int32 (N,) the digit.
    directions: int32 (N,) index into ``DIRECTIONS``.
    speeds: int32 (N,) pixels moved per frame.
    starts: int32 (N, 2) (row, col) of the digit's top-left pixel in frame 0.
    source_index: int32 (N,) index into sklearn's ``load_digits()`` of the digit's image.
  """
  videos: np.ndarray
  labels: np.ndarray
  directions: np.ndarray
  speeds: np.ndarray
  starts: np.ndarray
  source_index: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def captions(self, i: int) -> list[str]:
    """Every caption variant of clip ``i``."""
    return captions(self.labels[i], self.directions[i])

  def qa(self, i: int) -> list[tuple[str, str]]:
    """Every (question, answer) pair of clip ``i``."""
    return qa_pairs(self.labels[i], self.directions[i])


def _split_id(split: str) -> int:
  if split not in SPLITS:
    raise ValueError(f"Unknown moving digits split {split!r}; use one of {SPLITS}.")
  return SPLITS.index(split)


def _check_path(path: str) -> None:
  if path not in PATHS:
    raise ValueError(f"Unknown moving digits path {path!r}: use one of {PATHS}.")


def max_speed(frames: int = DEFAULT_FRAMES, canvas: int = DEFAULT_CANVAS) -> int:
  """The fastest speed (pixels a frame) at which a digit stays whole for ``frames`` frames."""
  if frames < 2:
    raise ValueError(f"A moving-digit clip needs frames >= 2 to show motion, got {frames}.")
  room = canvas - DIGIT_SIZE
  if room < frames - 1:
    raise ValueError(
        f"A {canvas}x{canvas} canvas leaves an 8x8 digit {max(room, 0)} pixels to move, fewer "
        f"than the {frames - 1} that {frames} frames at 1 pixel a frame need; use a canvas of "
        f"at least {DIGIT_SIZE + frames - 1} or at most {max(room, 0) + 1} frames.")
  return room // (frames - 1)


def clip_motion(split: str, index: int, *, seed: int = 0, frames: int = DEFAULT_FRAMES,
                canvas: int = DEFAULT_CANVAS,
                clips_per_image: int = DEFAULT_CLIPS_PER_IMAGE,
                path: str = DEFAULT_PATH) -> dict[str, int]:
  """What clip ``index`` of ``split`` shows, deterministic in (seed, split, index); ``path``
  is where the digit travels (`PATHS`, see the module docstring).

  Returns: {'image': position in the digits split, 'direction': index into DIRECTIONS,
  'speed': pixels a frame, 'row', 'col': the digit's top-left in frame 0}.
  """
  split_id = _split_id(split)
  _check_path(path)
  n_images = len(digits.split_indices(split))
  if not 0 <= index < n_images * clips_per_image:
    raise ValueError(f"Clip index {index} is outside the {split} split's "
                     f"{n_images * clips_per_image} clips ({clips_per_image} per image).")
  fastest = max_speed(frames, canvas)
  image, cycle = index % n_images, index // n_images
  offset = np.random.default_rng((seed, split_id, 0, image)).integers(len(DIRECTIONS))
  direction = int((offset + cycle) % len(DIRECTIONS))
  rng = np.random.default_rng((seed, split_id, 1, index))
  speed = int(rng.integers(1, fastest + 1))
  room, travel = canvas - DIGIT_SIZE, speed * (frames - 1)
  axis = 0 if DIRECTION_STEPS[direction][0] else 1
  step = DIRECTION_STEPS[direction][axis]
  start = [0, 0]
  if path == "centred":
    start[1 - axis] = room // 2
    first = (room - travel) // 2          # the path's top or left end
  else:
    start[1 - axis] = int(rng.integers(0, room + 1))
    first = int(rng.integers(0, room - travel + 1))   # anywhere the whole path fits
  start[axis] = first + (travel if step < 0 else 0)
  return {"image": image, "direction": direction, "speed": speed,
          "row": start[0], "col": start[1]}


def render(image: np.ndarray, direction: int, speed: int, row: int, col: int, *,
           frames: int = DEFAULT_FRAMES, canvas: int = DEFAULT_CANVAS) -> np.ndarray:
  """One clip: uint8 (frames, canvas, canvas), ``image`` (8, 8) at (row, col) + t * speed * step."""
  drow, dcol = DIRECTION_STEPS[direction]
  clip = np.zeros((frames, canvas, canvas), np.uint8)
  for t in range(frames):
    r, c = row + t * speed * drow, col + t * speed * dcol
    if not (0 <= r <= canvas - DIGIT_SIZE and 0 <= c <= canvas - DIGIT_SIZE):
      raise ValueError(f"Frame {t} puts the digit at ({r}, {c}), off the {canvas}x{canvas} "
                       "canvas; take the start from clip_motion, which keeps it whole.")
    clip[t, r:r + DIGIT_SIZE, c:c + DIGIT_SIZE] = image
  return clip


def load(split: str, *, seed: int = 0, frames: int = DEFAULT_FRAMES,
         canvas: int = DEFAULT_CANVAS, clips_per_image: int = DEFAULT_CLIPS_PER_IMAGE,
         num: int | None = None, path: str = DEFAULT_PATH) -> Clips:
  """The clips of ``split`` ('train': 1500 images, 'test': 297, times ``clips_per_image``),
  the digit travelling on ``path`` (`PATHS`).

  ``num`` keeps the first ``num`` clips (each is the same clip it is in the full split).
  """
  _split_id(split)
  _check_path(path)
  max_speed(frames, canvas)
  if clips_per_image < 1:
    raise ValueError(f"clips_per_image must be >= 1, got {clips_per_image}.")
  images, labels = digits.load(split)
  source = digits.split_indices(split)
  total = len(images) * clips_per_image
  n = total if num is None else num
  if not 0 <= n <= total:
    raise ValueError(f"num={num} is more than the {total} clips of the {split} split; raise "
                     "clips_per_image or ask for fewer.")
  motions = [clip_motion(split, i, seed=seed, frames=frames, canvas=canvas,
                         clips_per_image=clips_per_image, path=path) for i in range(n)]
  videos = np.zeros((n, frames, canvas, canvas, 1), np.uint8)
  for i, m in enumerate(motions):
    videos[i, ..., 0] = render(images[m["image"]], m["direction"], m["speed"], m["row"],
                               m["col"], frames=frames, canvas=canvas)
  image_pos = np.array([m["image"] for m in motions], np.int64)
  return Clips(
      videos=videos,
      labels=labels[image_pos].astype(np.int32),
      directions=np.array([m["direction"] for m in motions], np.int32),
      speeds=np.array([m["speed"] for m in motions], np.int32),
      starts=np.array([[m["row"], m["col"]] for m in motions], np.int32).reshape(n, 2),
      source_index=source[image_pos].astype(np.int32))


def captions(label: int, direction: int) -> list[str]:
  return text_templates.video_captions(label, direction)


def qa_pairs(label: int, direction: int) -> list[tuple[str, str]]:
  return text_templates.video_qa(label, direction)


def text_corpus() -> list[str]:
  """Every caption, question and answer the moving digits can produce."""
  texts = []
  for d in range(NUM_CLASSES):
    for m in range(len(DIRECTIONS)):
      texts += captions(d, m)
      for q, a in qa_pairs(d, m):
        texts += [q, a]
  return texts


def text_key(label, direction):
  """The pipeline's key of a clip's label-made text: label * 4 + direction (any shape)."""
  return np.asarray(label) * len(DIRECTIONS) + np.asarray(direction)


@functools.cache
def _load_cached(split: str, frames: int) -> Clips:
  # The pipeline opens a split several times (its description, text, batches, held-out
  # examples); rendering the 6000 training clips takes seconds.
  return load(split, frames=frames)


def decode_record(record: dict) -> source_lib.Example:
  return {"image": record["image"], "label": int(record["label"]), "captions": (),
          "text_key": int(record["text_key"])}


def open_moving_digits(split: str, frames: int = DEFAULT_FRAMES) -> source_lib.ExampleSource:
  """An `ExampleSource` of a split's clips (uint8 (frames, 16, 16, 1) each, the default canvas,
  clips_per_image and seed): the label is the digit, the text comes from (digit, direction)."""
  clips = _load_cached(split, int(frames))
  keys = text_key(clips.labels, clips.directions).astype(np.int32)
  records = [{"image": v, "label": l, "text_key": k}
             for v, l, k in zip(clips.videos, clips.labels, keys)]
  return source_lib.ExampleSource(
      name="moving_digits", records=records, decode=decode_record, num_classes=NUM_CLASSES,
      class_names=text_templates.DIGIT_WORDS, label_text="moving_digit", has_captions=False,
      in_memory=(clips.videos, clips.labels), frames=int(frames), text_keys=keys)
