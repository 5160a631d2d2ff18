"""Moving digits: motion measured from the pixels, the pasted digit against sklearn's image, the
held-out split, the text against the motion, determinism."""

from __future__ import annotations

import re

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import pytest
from sklearn import datasets as sk_datasets

from data import digits
from data import moving_digits as md

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Expected sign of the centre of mass's (row, col) change per frame, by direction name.
MOTION = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


@pytest.fixture(scope="module")
def test_clips():
  return md.load("test")


def _centre_of_mass(frames):
  """(..., H, W, 1) -> (..., 2) ink-weighted mean (row, col)."""
  v = frames[..., 0].astype(np.float64)
  rows = np.arange(v.shape[-2])[:, None]
  cols = np.arange(v.shape[-1])[None, :]
  total = v.sum(axis=(-2, -1))
  return np.stack([(v * rows).sum(axis=(-2, -1)) / total,
                   (v * cols).sum(axis=(-2, -1)) / total], axis=-1)


def test_shapes_and_the_centre_of_mass_moves_the_stated_way(test_clips):
  c = test_clips
  n = 297 * md.DEFAULT_CLIPS_PER_IMAGE
  assert c.videos.shape == (n, 8, 16, 16, 1) and c.videos.dtype == np.uint8
  assert c.labels.shape == c.directions.shape == (n,)
  com = _centre_of_mass(c.videos)                    # (n, T, 2)
  steps = np.diff(com, axis=1)                       # (n, T-1, 2)
  want = np.array([MOTION[md.DIRECTIONS[d]] for d in c.directions], np.float64)
  # Every frame moves by exactly the clip's speed in its direction (the digit moves whole).
  np.testing.assert_allclose(steps, np.broadcast_to((want * c.speeds[:, None])[:, None],
                                                    steps.shape), atol=1e-9)
  assert (c.speeds >= 1).all()
  # The four directions are equally common, and every image moves in all four.
  assert np.bincount(c.directions, minlength=4).tolist() == [297] * 4
  for src in np.unique(c.source_index)[:20]:
    assert sorted(c.directions[c.source_index == src].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("canvas,split,path", [(16, "test", "centred"), (24, "train", "centred"),
                                               (16, "test", "random"), (24, "train", "random")])
def test_every_frame_is_the_source_image_shifted_on_black(canvas, split, path):
  c = md.load(split, canvas=canvas, num=40, path=path)
  raw = sk_datasets.load_digits()
  assert (c.labels == raw.target[c.source_index]).all()
  if canvas == 24:
    assert c.speeds.max() == 2  # 24x24 leaves 16 pixels: 7 frames at 2 a frame fit
  for i in range(len(c)):
    src = np.round(raw.images[c.source_index[i]] * (255.0 / 16.0)).astype(np.uint8)
    found = []
    for t in range(c.videos.shape[1]):
      frame = c.videos[i, t, :, :, 0]
      windows = sliding_window_view(frame, (8, 8))   # (canvas-7, canvas-7, 8, 8)
      # The source at (r, c) and nothing else: the window matches and holds all the ink.
      hits = np.argwhere((windows == src).all(axis=(-2, -1))
                         & (int(frame.sum()) == int(src.sum())))
      assert len(hits) >= 1, (i, t)
      found.append(hits[0] if len(hits) == 1 else None)
    # Where the match is unique, it sits at start + t * speed * step.
    step = np.array(MOTION[md.DIRECTIONS[c.directions[i]]])
    for t, pos in enumerate(found):
      if pos is not None:
        np.testing.assert_array_equal(pos, c.starts[i] + t * c.speeds[i] * step)


def _path_ends(c):
  """(n, 2) the digit's (across, first-along) coordinates of each clip: where it sits across
  the motion, and the top or left end of its path along it."""
  vertical = np.isin(c.directions, [0, 1])
  travel = c.speeds * (c.videos.shape[1] - 1)
  across = np.where(vertical, c.starts[:, 1], c.starts[:, 0])
  along = np.where(vertical, c.starts[:, 0], c.starts[:, 1])
  backwards = np.isin(c.directions, [0, 2])           # up, left: the start is the far end
  return np.stack([across, np.where(backwards, along - travel, along)], axis=1), travel


@pytest.mark.parametrize("canvas", [16, 24])
def test_the_centred_path_runs_through_the_canvas_centre(canvas):
  c = md.load("test", canvas=canvas, num=200)         # the default path
  ends, travel = _path_ends(c)
  room = canvas - 8
  # Across the motion at the centre; along it, as much room before the path as after it.
  assert (ends[:, 0] == room // 2).all()
  np.testing.assert_array_equal(ends[:, 1], (room - travel) // 2)
  if canvas == 16:   # 4-pixel tokens: the digit's edges across the motion lie on token edges
    assert (ends[:, 0] % 4 == 0).all()


def test_the_random_path_spreads_the_digit_over_the_canvas(test_clips):
  c = md.load("test", path="random")
  ends, travel = _path_ends(c)
  assert set(ends[:, 0].tolist()) == set(range(9))     # every place across the 8-pixel room
  assert ends[:, 1].min() == 0 and (ends[:, 1] + travel).max() == 8
  # Same images, directions and speeds as the default (centred) clips.
  np.testing.assert_array_equal(c.source_index, test_clips.source_index)
  np.testing.assert_array_equal(c.directions, test_clips.directions)
  np.testing.assert_array_equal(c.speeds, test_clips.speeds)


def test_held_out_clips_use_only_held_out_digits(test_clips):
  test_src = set(digits.split_indices("test").tolist())
  train_src = set(digits.split_indices("train").tolist())
  assert set(test_clips.source_index.tolist()) == test_src  # every test image, no other
  train = md.load("train", num=3000)
  assert set(train.source_index.tolist()) <= train_src
  assert not set(train.source_index.tolist()) & test_src


def test_captions_and_answers_agree_with_the_pixels(test_clips):
  c = test_clips
  com = _centre_of_mass(c.videos)
  moved = com[:, -1] - com[:, 0]
  for i in range(0, len(c), 7):
    vertical = abs(moved[i, 0]) > 0
    measured = ("down" if moved[i, 0] > 0 else "up") if vertical else (
        "right" if moved[i, 1] > 0 else "left")
    d = int(c.labels[i])
    caps = c.captions(i)
    assert len(set(caps)) >= 8
    for cap in caps:
      words = re.findall(r"[a-z]+|\d+", cap)
      assert words[0] in (WORDS[d], str(d)), cap      # the digit leads
      assert words[2] == measured, cap               # the direction is the third word
      assert [w for w in words if w in WORDS or w.isdigit()] in ([WORDS[d]], [str(d)]), cap
      assert [w for w in words if w in MOTION] == [measured], cap
    qa = dict(c.qa(i))
    assert qa["what digit is moving?"] == WORDS[d]
    assert qa["which way does the digit move?"] == measured
    assert qa["does it move vertically?"] == ("yes" if vertical else "no")
    assert qa["does it move horizontally?"] == ("no" if vertical else "yes")
    assert qa["is it moving left?"] == ("yes" if measured == "left" else "no")
    assert qa["is the digit even?"] == ("yes" if d % 2 == 0 else "no")
  corpus = set(md.text_corpus())
  assert {"up", "down", "left", "right", "seven drifting left"} <= corpus


def test_deterministic_per_seed_and_index(test_clips):
  again = md.load("test", num=50)
  np.testing.assert_array_equal(again.videos, test_clips.videos[:50])
  np.testing.assert_array_equal(again.directions, test_clips.directions[:50])
  other = md.load("test", num=50, seed=1)
  assert not np.array_equal(other.videos, again.videos)
  assert (other.source_index == again.source_index).all()  # the seed moves, the index picks
  m = md.clip_motion("test", 17)
  assert (m["direction"], m["speed"]) == (test_clips.directions[17], test_clips.speeds[17])
  assert [m["row"], m["col"]] == test_clips.starts[17].tolist()


def test_bad_arguments_name_the_fix():
  with pytest.raises(ValueError, match="canvas of at least 15"):
    md.load("test", canvas=12, num=1)
  with pytest.raises(ValueError, match="frames >= 2"):
    md.load("test", frames=1, num=1)
  with pytest.raises(ValueError, match="Unknown moving digits split"):
    md.load("validation")
  with pytest.raises(ValueError, match="raise clips_per_image"):
    md.load("test", clips_per_image=1, num=298)
  with pytest.raises(ValueError, match=r"path 'diagonal': use one of \('centred', 'random'\)"):
    md.load("test", num=1, path="diagonal")
  with pytest.raises(ValueError, match="direction must be an index"):
    md.captions(3, 4)
