"""The reference-statistics cache: statistics against numpy, computed once per key."""
from __future__ import annotations

import numpy as np
import pytest

from mdm_jax.evaluation import reference_stats


def _batches(rs, n=3, b=5, d=4):
  return [rs.randn(b, d) for _ in range(n)]


def test_stats_from_batches_are_the_features_mean_and_covariance():
  batches = _batches(np.random.RandomState(0))
  stats = reference_stats.stats_from_batches(lambda x: 2.0 * x, iter(batches))
  features = 2.0 * np.concatenate(batches)
  np.testing.assert_allclose(stats.features, features, rtol=1e-6)
  np.testing.assert_allclose(stats.mu, features.mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-5)
  assert stats.count == 15


def test_given_statistics_are_kept_and_an_empty_reference_is_refused():
  mu, sigma = np.ones(4), np.eye(4)
  stats = reference_stats.stats_from_batches(lambda x: x, _batches(np.random.RandomState(1)),
                                             mu=mu, sigma=sigma)
  np.testing.assert_array_equal(stats.mu, mu)
  np.testing.assert_array_equal(stats.sigma, sigma)
  with pytest.raises(ValueError, match="empty"):
    reference_stats.stats_from_batches(lambda x: x, [])


def test_cached_computes_once_per_key(tmp_path):
  calls = []

  def compute(seed):
    def fn():
      calls.append(seed)
      return reference_stats.stats_from_batches(lambda x: x,
                                                _batches(np.random.RandomState(seed)))
    return fn

  path = tmp_path / "cache" / "ref.npz"
  a, cached_a = reference_stats.cached(path, "key a", compute(0))
  b, cached_b = reference_stats.cached(path, "key a", compute(1))
  assert (cached_a, cached_b) == (False, True) and calls == [0]
  np.testing.assert_array_equal(a.features, b.features)
  c, cached_c = reference_stats.cached(path, "key b", compute(2))   # another key: recomputed
  assert not cached_c and calls == [0, 2]
  assert not np.array_equal(c.features, a.features)
  assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]     # no temporary left behind


def test_a_cache_whose_arrays_do_not_fit_is_an_error(tmp_path):
  path = tmp_path / "ref.npz"
  np.savez(path, key=np.asarray("k"), features=np.zeros((3, 4)), mu=np.zeros(5),
           sigma=np.eye(4))
  with pytest.raises(ValueError, match="delete the file"):
    reference_stats.load(path, "k")
