"""Clip patchify: tokens built by hand with loops over (tubelet, row, col), inverse, and the
one-frame clip against the image path."""
import numpy as np
import pytest

from mdm_jax.models.vae import patchify, patchify_clip, unpatchify, unpatchify_clip


def _hand_tokens(clips, patch, tubelet):
  """Token (n, r, c) = the p x p patch at grid (r, c) of frames n*k .. n*k+k-1, each patch
  flattened row by row with channels last, frames concatenated."""
  b, frames, hgt, wid, ch = clips.shape
  gh, gw = hgt // patch, wid // patch
  out = []
  for i in range(b):
    toks = []
    for n in range(frames // tubelet):
      for r in range(gh):
        for c in range(gw):
          vals = []
          for t in range(n * tubelet, (n + 1) * tubelet):
            for y in range(r * patch, (r + 1) * patch):
              for x in range(c * patch, (c + 1) * patch):
                vals += list(clips[i, t, y, x])
          toks.append(vals)
    out.append(toks)
  return np.array(out)


@pytest.mark.parametrize("frames,tubelet,patch,ch", [(4, 1, 2, 1), (4, 2, 2, 3), (6, 3, 1, 2),
                                                     (1, 1, 2, 3)])
def test_clip_patches_by_hand_and_round_trip(frames, tubelet, patch, ch):
  clips = np.random.RandomState(frames + ch).randn(2, frames, 4, 6, ch).astype(np.float32)
  tokens = np.asarray(patchify_clip(clips, patch, tubelet))
  gh, gw = 4 // patch, 6 // patch
  assert tokens.shape == (2, frames // tubelet * gh * gw, tubelet * patch * patch * ch)
  np.testing.assert_array_equal(tokens, _hand_tokens(clips, patch, tubelet))
  back = unpatchify_clip(tokens, frames, (gh, gw), patch, ch, tubelet)
  np.testing.assert_array_equal(np.asarray(back), clips)


def test_one_frame_clip_is_the_image_path_and_frames_patchify_alone():
  images = np.random.RandomState(0).randn(3, 8, 4, 2).astype(np.float32)
  np.testing.assert_array_equal(patchify_clip(images[:, None], 2), patchify(images, 2))
  tokens = patchify(images, 2)
  np.testing.assert_array_equal(unpatchify_clip(tokens, 1, (4, 2), 2, 2)[:, 0],
                                unpatchify(tokens, (4, 2), 2, 2))
  # With tubelet 1 a clip's tokens are its frames' image tokens, frame after frame.
  clips = np.random.RandomState(1).randn(2, 3, 8, 4, 2).astype(np.float32)
  np.testing.assert_array_equal(
      patchify_clip(clips, 2),
      np.concatenate([np.asarray(patchify(clips[:, t], 2)) for t in range(3)], axis=1))


def test_bad_shapes_name_the_fix():
  with pytest.raises(ValueError, match="an image batch is clips"):
    patchify_clip(np.zeros((2, 8, 8, 1)), 2)
  with pytest.raises(ValueError, match="tubelet that divides"):
    patchify_clip(np.zeros((2, 3, 8, 8, 1)), 2, tubelet=2)
  with pytest.raises(ValueError, match="change model.patch_size"):
    patchify_clip(np.zeros((2, 2, 7, 8, 1)), 2)
  with pytest.raises(ValueError, match="tubelet that divides"):
    unpatchify_clip(np.zeros((2, 12, 8)), 3, (2, 2), 2, 1, tubelet=2)
