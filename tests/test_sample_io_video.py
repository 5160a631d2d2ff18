"""What people look at for video: an animated GIF grid with one frame per clip frame, each the
clips' frame t tiled as the PNG grids are (positions computed by hand here), and ``videos``
uint8 (N, T, H, W, C) in the .npz; the sample CLI's frame masks for video prediction and
interpolation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from experiments import sample_io
import subproc

N, T, H, W = 3, 4, 5, 6


def _clips():
  return np.random.default_rng(0).integers(0, 256, (N, T, H, W, 1), dtype=np.uint8)


def test_gif_grid_has_a_frame_per_clip_frame_tiled_by_hand(tmp_path):
  x = _clips()
  path = sample_io.save_visual_grid(x, str(tmp_path / "grid"), nrow=N)
  assert path.endswith(".gif")
  gif = Image.open(path)
  assert gif.n_frames == T
  assert gif.size == (N * (W + 1) + 1, H + 2)      # one row of N tiles, 1-pixel grey borders
  for t in range(T):
    gif.seek(t)
    frame = np.asarray(gif.convert("L"))
    assert (frame[0] == 128).all() and (frame[:, 0] == 128).all()
    for i in range(N):
      tile = frame[1:1 + H, 1 + i * (W + 1):1 + i * (W + 1) + W]
      np.testing.assert_array_equal(tile, x[i, t, ..., 0], err_msg=f"clip {i} frame {t}")


def test_images_still_give_a_png(tmp_path):
  path = sample_io.save_visual_grid(_clips()[:, 0], str(tmp_path / "grid"))
  assert path.endswith(".png") and Image.open(path).format == "PNG"


def test_npz_holds_videos(tmp_path):
  x = _clips()
  sample_io.save_npz(str(tmp_path / "v.npz"), x, labels=np.arange(N))
  with np.load(tmp_path / "v.npz") as f:
    assert set(f.files) == {"videos", "labels"}
    assert f["videos"].dtype == np.uint8 and f["videos"].shape == (N, T, H, W, 1)
    np.testing.assert_array_equal(f["videos"], x)


def test_frame_masks_of_predict_and_interpolate():
  """The kept frames (True) against hand-written masks, and an image run refused, in a fresh
  process (experiments.sample defines absl flags at import)."""
  code = """
import numpy as np
from absl import app
from experiments import sample
np.testing.assert_array_equal(sample.frame_mask("predict", 4)[:, 0, 0], [1, 1, 0, 0])
np.testing.assert_array_equal(sample.frame_mask("predict", 5)[:, 0, 0], [1, 1, 0, 0, 0])
np.testing.assert_array_equal(sample.frame_mask("interpolate", 5)[:, 0, 0], [1, 0, 0, 0, 1])
assert sample.TASK_NAMES["t2v"] == "t2i" and sample.spec("predict").name == "inpaint"
try:
  sample.frame_mask("predict", 1)
except app.UsageError as e:
  assert "model.frames=1" in str(e) and "--task=inpaint" in str(e)
else:
  raise AssertionError("an image run was not refused")
print("ok")
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=subproc.REPO, env=subproc.env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
