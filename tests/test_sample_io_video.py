"""What people look at for video: an animated GIF grid with one frame per clip frame, each the
clips' frame t tiled as the PNG grids are (positions computed by hand here), and ``videos``
uint8 (N, T, H, W, C) in the .npz."""

from __future__ import annotations

import numpy as np
from PIL import Image

from experiments import sample_io

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
