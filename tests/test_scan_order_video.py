"""3-D (clip) scan orders against orders built by hand with nested loops, and the T=1 case
against a frozen copy of the image-only scan orders every image checkpoint was trained with."""
import itertools

import numpy as np
import pytest

from mdm_jax.models import scan_order as so


# ------------------------------------------------------------------ frozen image-only oracle
# A verbatim copy of the image scan orders before clips existed: an image (a clip of one
# frame) must keep exactly these permutations and this schedule, or image checkpoints change.

def _legacy_image_order(gh, gw, order):
  grid = np.arange(gh * gw).reshape(gh, gw)
  perm = grid.reshape(-1) if order < 2 else grid.T.reshape(-1)
  return perm[::-1].copy() if order % 2 else perm


def _legacy_layer_orders(layer, directions):
  return (0, 0) if directions == 1 else (layer % 4, layer % 2)


def _legacy_permutation(n_prefix, grid, n_text, image_ord, text_ord):
  n_image = 0 if grid is None else grid[0] * grid[1]
  image = (n_prefix + _legacy_image_order(*grid, image_ord) if grid is not None
           else np.zeros((0,), np.int64))
  text = n_prefix + n_image + (np.arange(n_text)[::-1] if text_ord else np.arange(n_text))
  content = [text, image] if text_ord == 1 else [image, text]
  return np.concatenate([np.arange(n_prefix)] + content).astype(np.int32)


def _legacy_schedule(n_prefix, grid, n_text, directions):
  period = 1 if directions == 1 else 4
  return np.stack([_legacy_permutation(n_prefix, grid, n_text, *_legacy_layer_orders(l, directions))
                   for l in range(period)])


@pytest.mark.parametrize("grid,n_prefix,n_text", [
    ((2, 3), 3, 4), ((4, 4), 5, 0), ((3, 5), 4, 7), ((1, 6), 2, 1), (None, 2, 5), ((5, 2), 0, 3)])
@pytest.mark.parametrize("directions", [1, 4])
@pytest.mark.parametrize("time_orders", [True, False])
def test_one_frame_is_exactly_the_image_schedule(grid, n_prefix, n_text, directions, time_orders):
  layout = so.SequenceLayout(n_prefix, grid, n_text, frames=1)
  assert layout == so.SequenceLayout(n_prefix, grid, n_text)  # frames defaults to one
  perms, invs = layout.schedule(directions, time_orders=time_orders)
  want = _legacy_schedule(n_prefix, grid, n_text, directions)
  np.testing.assert_array_equal(perms, want)
  assert perms.dtype == np.int32
  for perm, inv in zip(perms, invs):
    np.testing.assert_array_equal(perm[inv], np.arange(layout.length))
  for layer in range(9):
    assert so.layer_orders(layer, directions, frames=1, time_orders=time_orders) == \
        _legacy_layer_orders(layer, directions)
  if grid is not None:
    for order in range(4):
      want = _legacy_image_order(*grid, order)
      np.testing.assert_array_equal(so.clip_order(1, *grid, order), want)
      np.testing.assert_array_equal(so.image_order(*grid, order), want)


# ------------------------------------------------------------------ clip orders by hand

def _idx(t, r, c, gh, gw):
  return t * gh * gw + r * gw + c


def _hand_orders(frames, gh, gw):
  """The six clip orders written out with nested loops over the time-major layout."""
  row = [_idx(t, r, c, gh, gw) for t in range(frames) for r in range(gh) for c in range(gw)]
  col = [_idx(t, r, c, gh, gw) for t in range(frames) for c in range(gw) for r in range(gh)]
  time = [_idx(t, r, c, gh, gw) for r in range(gh) for c in range(gw) for t in range(frames)]
  return [row, row[::-1], col, col[::-1], time, time[::-1]]


def test_clip_orders_by_hand_on_2_frames_of_2x3():
  # Frame 0:  0 1 2    Frame 1:  6  7  8
  #           3 4 5              9 10 11
  np.testing.assert_array_equal(so.clip_order(2, 2, 3, 2), [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])
  np.testing.assert_array_equal(so.clip_order(2, 2, 3, 4), [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11])
  np.testing.assert_array_equal(so.clip_order(2, 2, 3, 5), [11, 5, 10, 4, 9, 3, 8, 2, 7, 1, 6, 0])


@pytest.mark.parametrize("frames,gh,gw", [(2, 2, 3), (3, 4, 2), (5, 3, 3), (8, 2, 2), (4, 1, 5)])
def test_clip_orders_against_nested_loops(frames, gh, gw):
  n = frames * gh * gw
  hand = _hand_orders(frames, gh, gw)
  x = np.random.RandomState(n).randn(2, n, 3)
  for order, want in enumerate(hand):
    perm = so.clip_order(frames, gh, gw, order)
    np.testing.assert_array_equal(perm, want)
    assert sorted(perm.tolist()) == list(range(n))  # a bijection
    inv = so.inverse(perm)
    np.testing.assert_array_equal(x[:, perm][:, inv], x)
    np.testing.assert_array_equal(x[:, inv][:, perm], x)
    if order % 2:  # each reversed order is the exact reversal of the one before
      np.testing.assert_array_equal(perm, so.clip_order(frames, gh, gw, order - 1)[::-1])
  # Time-major: position (r, c) of frames 0..T-1 is visited consecutively, in time order.
  time = so.clip_order(frames, gh, gw, 4)
  for k, (r, c) in enumerate(itertools.product(range(gh), range(gw))):
    np.testing.assert_array_equal(time[k * frames:(k + 1) * frames],
                                  [_idx(t, r, c, gh, gw) for t in range(frames)])
  # Frame-major forward orders finish frame t before frame t+1 starts.
  for order in (0, 2):
    frame_of = so.clip_order(frames, gh, gw, order) // (gh * gw)
    np.testing.assert_array_equal(frame_of, np.repeat(np.arange(frames), gh * gw))


def test_clip_schedule_period_6_with_time_orders_and_4_without():
  frames, gh, gw, n_prefix, n_text = 3, 2, 2, 4, 5
  layout = so.SequenceLayout(n_prefix, (gh, gw), n_text, frames=frames)
  n = frames * gh * gw
  assert layout.n_image == n and layout.length == n_prefix + n + n_text
  hand = _hand_orders(frames, gh, gw)
  text_fwd = list(range(n_prefix + n, n_prefix + n + n_text))
  prefix = list(range(n_prefix))

  def expected(image_ord, text_ord):
    image = [n_prefix + i for i in hand[image_ord]]
    return prefix + (text_fwd[::-1] + image if text_ord else image + text_fwd)

  perms, invs = layout.schedule(4)
  assert perms.shape == (6, layout.length)
  for l in range(6):
    np.testing.assert_array_equal(perms[l], expected(l, l % 2))
    np.testing.assert_array_equal(perms[l][invs[l]], np.arange(layout.length))
    if l % 2:  # odd layers scan the exact reversal of the content of the layer before
      np.testing.assert_array_equal(perms[l][n_prefix:], perms[l - 1][n_prefix:][::-1])
  assert [so.layer_orders(l, frames=frames) for l in range(8)] == \
      [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0), (5, 1), (0, 0), (1, 1)]

  # Frame-by-frame ablation: the four image orders over the whole clip, no time-major scans.
  perms_ff, _ = layout.schedule(4, time_orders=False)
  assert perms_ff.shape == (4, layout.length)
  for l in range(4):
    np.testing.assert_array_equal(perms_ff[l], expected(l, l % 2))
  assert so.schedule_period(4, frames, time_orders=False) == 4
  assert so.schedule_period(4, frames) == 6

  perms1, _ = layout.schedule(1)
  np.testing.assert_array_equal(perms1, np.arange(layout.length)[None])
  np.testing.assert_array_equal(layout.segments(),
                                [0] * n_prefix + [1] * n + [2] * n_text)


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match="clip order must be in 0..5"):
    so.clip_order(2, 2, 2, 6)
  with pytest.raises(ValueError, match="at least one frame"):
    so.SequenceLayout(1, (2, 2), 3, frames=0)
  with pytest.raises(ValueError, match="text-only layout has no frames"):
    so.SequenceLayout(1, None, 3, frames=2)
  with pytest.raises(ValueError, match="time-major orders need frames > 1"):
    so.SequenceLayout(1, (2, 2), 3).permutation(4, 0)
  with pytest.raises(ValueError, match="image order must be in 0..3"):
    so.image_order(2, 2, 4)
  with pytest.raises(ValueError, match="directions"):
    so.SequenceLayout(1, (2, 2), 3, frames=2).schedule(2)


def test_row_end_tokens_in_a_clip_follow_every_row_of_every_frame():
  frames, gh, gw, d = 3, 2, 2, 1
  x = np.arange(frames * gh * gw, dtype=np.float32).reshape(1, -1, d) + 1
  pad = np.zeros((d,), np.float32)
  y = np.asarray(so.insert_row_end_tokens(x, pad, frames * gh, gw))
  want = []
  for t in range(frames):
    for r in range(gh):
      want += [_idx(t, r, c, gh, gw) + 1 for c in range(gw)] + [0]
  np.testing.assert_array_equal(y[0, :, 0], want)
  np.testing.assert_array_equal(so.remove_row_end_tokens(y, frames * gh, gw), x)
  # The layout of that clip has frames on a (gh, gw + 1) grid: its orders are bijections.
  layout = so.SequenceLayout(2, (gh, gw + 1), 3, frames=frames)
  assert layout.n_image == y.shape[1]
  for perm in layout.schedule(4)[0]:
    assert sorted(perm.tolist()) == list(range(layout.length))
