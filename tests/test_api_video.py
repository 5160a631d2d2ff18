"""The Python API on a clip workdir (`video_tiny`, trained by the CLI: the conftest's
`video_workdir`, shared with tests/test_evaluate_video.py): the video methods return
clips of the model's shape; prediction and interpolation keep the given frames exactly (the
oracle: the input clips' own pixels) and generate the others."""

from __future__ import annotations

import numpy as np
import pytest

import mdm_jax
from data import moving_digits

N = 2


@pytest.fixture(scope="module")
def pipe(video_workdir):
  return mdm_jax.load(str(video_workdir), batch_size=N, steps=2)


@pytest.fixture(scope="module")
def clips(pipe):
  """N held-out moving-digit clips of the model's shape, uint8 (N, T, H, W, 1)."""
  t = pipe.frames
  return moving_digits.load("test", frames=t, num=N).videos


def test_generated_clips_have_the_model_shape(pipe):
  t, h, w, c = pipe.image_shape
  assert t == pipe.frames == 4 and (h, w, c) == (16, 16, 1)
  assert pipe.class_to_video([3, 7]).shape == (N, t, h, w, c)
  videos, captions = pipe.joint_video(N)
  assert videos.shape == (N, t, h, w, c) and videos.dtype == np.uint8
  assert len(captions) == N and all(isinstance(s, str) for s in captions)


@pytest.mark.parametrize("method,kept", [("predict", [0, 1]), ("interpolate", [0, 3])])
def test_frame_tasks_keep_the_given_frames(pipe, clips, method, kept):
  out = getattr(pipe, method)(clips)
  assert out.shape == clips.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, kept], clips[:, kept])
  generated = [f for f in range(pipe.frames) if f not in kept]
  assert not np.array_equal(out[:, generated], clips[:, generated])


def test_understanding_methods_take_clips(pipe, clips):
  assert len(pipe.caption_video(clips)) == N
  answers = pipe.video_vqa(clips, ["which way does the digit move?"] * N)
  assert len(answers) == N and all(isinstance(a, str) for a in answers)
  with pytest.raises(ValueError, match=r"images must be \(N, 4, 16, 16, 1\)"):
    pipe.caption_video(clips[:, 0])     # frames, not clips
