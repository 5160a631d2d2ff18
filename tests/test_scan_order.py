"""Scan orders against hand-written orders on small grids, inverses and the layer schedule."""
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.models import scan_order as so


def test_image_orders_by_hand_on_2x3_grid():
  # Grid (row-major indices):  0 1 2
  #                            3 4 5
  np.testing.assert_array_equal(so.image_order(2, 3, 0), [0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(so.image_order(2, 3, 1), [5, 4, 3, 2, 1, 0])
  np.testing.assert_array_equal(so.image_order(2, 3, 2), [0, 3, 1, 4, 2, 5])
  np.testing.assert_array_equal(so.image_order(2, 3, 3), [5, 2, 4, 1, 3, 0])
  np.testing.assert_array_equal(so.text_order(4, 1), [3, 2, 1, 0])


@pytest.mark.parametrize("order", range(4))
def test_orders_and_inverses_round_trip(order):
  x = np.random.RandomState(order).randn(3, 4 * 5, 2)
  perm = so.image_order(4, 5, order)
  inv = so.inverse(perm)
  np.testing.assert_array_equal(x[:, perm][:, inv], x)
  np.testing.assert_array_equal(x[:, inv][:, perm], x)
  assert sorted(perm.tolist()) == list(range(20))


def test_layer_schedule_and_prefix_never_moves():
  layout = so.SequenceLayout(n_prefix=3, grid=(2, 3), n_text=4)
  assert [so.layer_orders(l) for l in range(6)] == [(0, 0), (1, 1), (2, 0), (3, 1), (0, 0),
                                                     (1, 1)]
  assert so.layer_orders(5, directions=1) == (0, 0)
  perms, invs = layout.schedule(4)
  assert perms.shape == (4, 13)
  for perm, inv in zip(perms, invs):
    np.testing.assert_array_equal(perm[:3], [0, 1, 2])
    np.testing.assert_array_equal(perm[inv], np.arange(13))
  # Layer 3: reversed text first, then the column-major reversed image.
  np.testing.assert_array_equal(perms[3][3:7] - 9, [3, 2, 1, 0])
  np.testing.assert_array_equal(perms[3][7:] - 3, [5, 2, 4, 1, 3, 0])
  # Layer 1 scans the whole content (image then text) in exact reverse.
  np.testing.assert_array_equal(perms[1][3:], np.arange(12, 2, -1))
  # Layer 2: column-major image, then forward text.
  np.testing.assert_array_equal(perms[2][3:9] - 3, [0, 3, 1, 4, 2, 5])
  np.testing.assert_array_equal(perms[2][9:] - 9, [0, 1, 2, 3])
  perms1, _ = layout.schedule(1)
  np.testing.assert_array_equal(perms1, np.arange(13)[None])
  with pytest.raises(ValueError, match="directions"):
    layout.schedule(2)


def test_text_only_layout():
  layout = so.SequenceLayout(n_prefix=2, grid=None, n_text=5)
  perms, _ = layout.schedule(4)
  np.testing.assert_array_equal(perms[1], [0, 1, 6, 5, 4, 3, 2])
  np.testing.assert_array_equal(layout.segments(), [0, 0, 2, 2, 2, 2, 2])


def test_row_end_tokens_round_trip():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 6, 3), jnp.float32)
  pad = jnp.array([7.0, 8.0, 9.0])
  y = so.insert_row_end_tokens(x, pad, 2, 3)
  assert y.shape == (2, 8, 3)
  np.testing.assert_array_equal(y[:, 3], np.broadcast_to(pad, (2, 3)))
  np.testing.assert_array_equal(y[:, 7], np.broadcast_to(pad, (2, 3)))
  np.testing.assert_array_equal(so.remove_row_end_tokens(y, 2, 3), x)
