"""The video metrics (mdm_jax.evaluation.video) against oracles made independently of them: the
moving-digit clips of data.moving_digits (their digit and direction are what the generator
drew), clips drawn here by hand, reversed in time or stitched from different digits, and hand
formulas for the centre of mass and the frame error."""
from __future__ import annotations

import numpy as np
import pytest

from data import digits, moving_digits as md, text_templates
from mdm_jax.evaluation import digits_classifier
from mdm_jax.evaluation import video

STEPS = md.DIRECTION_STEPS
RIGHT, LEFT, UP, DOWN = (md.DIRECTIONS.index(w) for w in ("right", "left", "up", "down"))
OPPOSITE = np.asarray([md.DIRECTIONS.index(w) for w in ("down", "up", "right", "left")])


@pytest.fixture(scope="module")
def params():
  return digits_classifier.train_digits_classifier(seed=0)


@pytest.fixture(scope="module")
def clips():
  return md.load("test")     # 1188 held-out clips of 8 frames on 16x16


@pytest.fixture(scope="module")
def read_right(params):
  """Held-out digits (uint8 8x8) that the classifier reads right as they are, with labels."""
  images, labels = digits.load("test")
  ok = digits_classifier.digits_predict(params, images) == labels
  return images[ok], labels[ok]


def paste(image, positions, canvas=16):
  """uint8 (1, T, canvas, canvas, 1): ``image`` (8, 8) with its top-left at each (row, col)."""
  clip = np.zeros((1, len(positions), canvas, canvas, 1), np.uint8)
  for t, (r, c) in enumerate(positions):
    clip[0, t, r:r + 8, c:c + 8, 0] = image
  return clip


def test_true_clips_read_as_their_digit_and_direction(params, clips):
  frame_digits = video.read_frames(params, clips.videos)
  assert frame_digits.shape == (len(clips), 8)
  # The classifier reads 97.6% of these digits at their true position; the window found around
  # the ink reads 94.9% of the frames and 94.8% of the clips (measured).
  assert np.mean(video.clip_digits(frame_digits) == clips.labels) >= 0.93
  assert np.mean(video.temporally_consistent(frame_digits)) >= 0.97
  # The same clips as floats in [-1, 1] (the model's range) read the same.
  as_float = clips.videos[:64].astype(np.float32) / 127.5 - 1.0
  np.testing.assert_array_equal(video.read_frames(params, as_float), frame_digits[:64])
  np.testing.assert_array_equal(video.motion_directions(clips.videos, STEPS), clips.directions)
  # Reversed in time, every clip moves the opposite way.
  np.testing.assert_array_equal(video.motion_directions(clips.videos[:, ::-1], STEPS),
                                OPPOSITE[clips.directions])


def test_true_clips_with_background_noise_read_the_same(params, clips):
  """Generated clips are not black between the strokes: noise of std 0.1 (in [-1, 1]) over the
  whole canvas moves neither the window nor the centre of mass much (94.3% measured)."""
  rng = np.random.default_rng(0)
  noisy = np.clip(clips.videos[:400].astype(np.float32) / 127.5 - 1.0
                  + rng.normal(0.0, 0.1, clips.videos[:400].shape), -1.0, 1.0)
  frame_digits = video.read_frames(params, noisy)
  assert np.mean(video.clip_digits(frame_digits) == clips.labels[:400]) >= 0.92
  np.testing.assert_array_equal(video.motion_directions(noisy, STEPS), clips.directions[:400])


def test_a_hand_made_clip_of_a_digit_moving_right(params, read_right):
  images, labels = read_right
  clip = paste(images[0], [(4, 1 + t) for t in range(6)])
  assert video.motion_directions(clip, STEPS).tolist() == [RIGHT]
  assert video.motion_directions(clip[:, ::-1], STEPS).tolist() == [LEFT]
  np.testing.assert_array_equal(video.read_frames(params, clip), [[labels[0]] * 6])
  assert video.temporally_consistent(video.read_frames(params, clip)).tolist() == [True]
  # Down at 2 pixels a frame, on a 24x24 canvas, in RGB.
  down = np.repeat(paste(images[1], [(2 * t, 9) for t in range(8)], canvas=24), 3, axis=-1)
  assert video.motion_directions(down, STEPS).tolist() == [DOWN]


def test_a_still_or_empty_clip_reads_still_and_no_digit(params, read_right):
  images, _ = read_right
  still = paste(images[0], [(3, 5)] * 4)
  empty = np.zeros_like(still)
  both = np.concatenate([still, empty])
  assert video.motion_directions(both, STEPS).tolist() == [video.STILL, video.STILL]
  frame_digits = video.read_frames(params, both)
  assert (frame_digits[1] == video.NO_DIGIT).all()
  assert video.clip_digits(frame_digits)[1] == video.NO_DIGIT
  assert video.temporally_consistent(frame_digits).tolist() == [True, False]
  # Slower than min_speed (1 pixel over 7 frames) is still; one frame with ink is too.
  slow = paste(images[0], [(3, 4)] * 4 + [(3, 5)] * 4)
  assert video.motion_directions(slow, STEPS).tolist() == [video.STILL]
  one = paste(images[0], [(3, 4)] * 4)
  one[0, 1:] = 0
  assert video.motion_directions(one, STEPS).tolist() == [video.STILL]


def test_frames_of_different_digits_are_not_temporally_consistent(params, read_right):
  images, labels = read_right
  a = int(np.flatnonzero(labels == 3)[0])
  b = int(np.flatnonzero(labels == 7)[0])
  clip = paste(images[a], [(4, 2 + t) for t in range(5)])
  clip[0, 3:] = paste(images[b], [(4, 5), (4, 6)])[0]
  frame_digits = video.read_frames(params, clip)
  np.testing.assert_array_equal(frame_digits, [[3, 3, 3, 7, 7]])
  assert video.temporally_consistent(frame_digits).tolist() == [False]
  assert video.clip_digits(frame_digits).tolist() == [3]          # the majority
  assert video.clip_digits(np.asarray([[7, 3, 3, 7]])).tolist() == [3]   # a tie: the smaller


def test_centre_of_mass_and_velocity_by_hand():
  clip = np.full((1, 5, 10, 10), -1.0, np.float32)   # floats: -1 is black
  for t in range(5):
    clip[0, t, 6, 1 + 2 * t] = 1.0                   # one white pixel, 2 pixels a frame right
    clip[0, t, 8, 1 + 2 * t] = 0.0                   # and a half-bright one 2 rows below it
  centres = video.centres_of_mass(clip)
  # Weights 1 and 0.5: row (6 * 1 + 8 * 0.5) / 1.5.
  np.testing.assert_allclose(centres[0], [[20 / 3, 1 + 2 * t] for t in range(5)])
  clip[0, 2] = -1.0                                  # an empty frame in the middle
  centres = video.centres_of_mass(clip)
  assert np.isnan(centres[0, 2]).all()
  np.testing.assert_allclose(video.velocities(centres), [[0.0, 2.0]])
  assert video.motion_directions(clip, STEPS).tolist() == [RIGHT]
  with pytest.raises(ValueError, match="unit steps along one axis"):
    video.motion_directions(clip, [(1, 1)])


def test_frame_error_on_the_generated_frames_only():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 246, (3, 6, 8, 8, 1)).astype(np.uint8)
  generated = rng.integers(0, 256, truth.shape).astype(np.uint8)   # wrong everywhere ...
  frames = np.asarray([False] * 3 + [True] * 3)
  generated[:, frames] = truth[:, frames]                          # ... but where generated
  error = video.frame_error(generated, truth, frames)
  assert error["mse"] == 0.0 and error["psnr"] == np.inf
  generated[:, frames] += 10                                       # a constant offset
  error = video.frame_error(generated, truth, frames)
  np.testing.assert_allclose(error["mse"], (10 / 255) ** 2)
  np.testing.assert_allclose(error["psnr"], 20 * np.log10(255 / 10))
  # The same clips as floats in [-1, 1].
  as_float = lambda x: x.astype(np.float64) / 127.5 - 1.0
  np.testing.assert_allclose(video.frame_error(as_float(generated), as_float(truth), frames)["mse"],
                             (10 / 255) ** 2)
  with pytest.raises(ValueError, match="at least one True"):
    video.frame_error(generated, truth, np.zeros(6, bool))


def test_every_video_caption_names_its_digit_and_direction():
  words = md.DIRECTIONS
  for d in range(10):
    for m in range(len(words)):
      for caption in text_templates.video_captions(d, m):
        assert video.caption_reading(caption, words) == (d, m), caption
  assert video.caption_reading("a seven drifting left or right", words) == (7, None)
  assert video.caption_reading("someone moving upward", words) == (None, None)
  texts = ["seven moving left", "7 drifts left frame by frame", "one moving left",
           "seven heading up"]
  got = video.caption_accuracy(texts, [7, 7, 7, 7], [LEFT] * 4, words)
  assert got == {"digit": 0.75, "direction": 0.75, "both": 0.5}
