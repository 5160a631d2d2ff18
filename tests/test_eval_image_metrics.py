"""FID, Inception Score and precision/recall against closed forms and hand-drawn cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from mdm_jax.evaluation import image_metrics


def _closed_form_commuting(mu1, a, mu2, b):
  # Commuting covariances share eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i).
  return float(np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b)))


def test_frechet_distance_diagonal_gaussians():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
  got = image_metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, _closed_form_commuting(mu1, a, mu2, b), rtol=1e-8)


def test_frechet_distance_commuting_full_covariances():
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a, b = rng.uniform(0.2, 2, size=5), rng.uniform(0.2, 2, size=5)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  got = image_metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(got, _closed_form_commuting(mu1, a, mu2, b), rtol=1e-7)


def test_frechet_distance_identical_is_zero_and_zero_covariances_leave_the_mean_term():
  rng = np.random.default_rng(2)
  m = rng.normal(size=(4, 4))
  sigma = m @ m.T
  mu = rng.normal(size=4)
  assert abs(image_metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
  # Zero covariances: only the mean term is left (no eps offset biases it).
  got = image_metrics.frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.zeros((3, 3)))
  np.testing.assert_allclose(got, 3.0, rtol=1e-12)


def test_frechet_distance_singular_covariances_match_the_closed_form():
  # Rank-deficient commuting covariances (zeros on the shared eigenbasis): the product is
  # singular, which is where sqrtm-based FIDs fall back to an eps offset.
  rng = np.random.default_rng(4)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  a = np.array([2.0, 0.0, 1.5, 0.0, 0.3, 0.0])
  b = np.array([0.0, 0.0, 0.7, 1.1, 2.0, 0.0])
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  got = image_metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  # A zero eigenvalue comes back as float64 round-off (~1e-16), whose root is ~1e-8: the
  # tolerance is that, per zero direction, not an eps offset's bias (~eps * d = 6e-6).
  np.testing.assert_allclose(got, _closed_form_commuting(mu1, a, mu2, b), rtol=0, atol=1e-7)


def test_frechet_distance_fewer_samples_than_dims_is_the_nonsingular_limit():
  # 5 samples in 8 dims give rank-4 covariances. With a vanishing ridge the product is
  # nonsingular and scipy's sqrtm (the oracle) is well-posed; its limit is the exact value.
  rng = np.random.default_rng(5)
  f1, f2 = rng.normal(size=(5, 8)), rng.normal(0.5, 2.0, size=(5, 8))
  got = image_metrics.frechet_distance_from_features(f1, f2)
  m1, s1 = np.mean(f1, axis=0), np.cov(f1, rowvar=False)
  m2, s2 = np.mean(f2, axis=0), np.cov(f2, rowvar=False)
  ridge = np.eye(8) * 1e-9
  root = scipy.linalg.sqrtm((s1 + ridge) @ (s2 + ridge)).real
  limit = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
  np.testing.assert_allclose(got, limit, rtol=1e-5)


def test_frechet_distance_to_features_fewer_samples_than_dims_against_sqrtm():
  """A full-rank reference covariance against 6 samples in 10 dimensions (the n x n form) and
  against 30 (the d x d form): scipy's sqrtm of the product (its ridge limit where singular,
  which the ridge biases by ~sqrt(ridge) per missing direction), and the two-eigendecomposition
  form on the covariance to round-off."""
  rng = np.random.default_rng(7)
  a = rng.normal(size=(10, 10))
  mu1, sigma1 = rng.normal(size=10), a @ a.T / 10 + 0.1 * np.eye(10)
  for n in (6, 30):
    f2 = rng.normal(0.3, 1.5, size=(n, 10))
    m2, s2 = np.mean(f2, axis=0), np.cov(f2, rowvar=False)
    root = scipy.linalg.sqrtm(sigma1 @ (s2 + np.eye(10) * 1e-10)).real
    want = np.sum((mu1 - m2) ** 2) + np.trace(sigma1) + np.trace(s2) - 2 * np.trace(root)
    got = image_metrics.frechet_distance_to_features(mu1, sigma1, f2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got, image_metrics.frechet_distance(mu1, sigma1, m2, s2),
                               rtol=1e-8)
  with pytest.raises(ValueError, match="sigma1 has a negative eigenvalue"):
    image_metrics.frechet_distance_to_features(mu1, -sigma1, f2[:6])
  with pytest.raises(ValueError, match="means must be two vectors of one length"):
    image_metrics.frechet_distance_to_features(mu1, sigma1, f2[:6, :9])
  with pytest.raises(ValueError, match="covariances must be"):
    image_metrics.frechet_distance_to_features(mu1, sigma1[:9, :9], f2[:6])


def test_frechet_distance_rejects_a_matrix_that_is_not_a_covariance():
  with pytest.raises(ValueError, match="sigma1 has a negative eigenvalue"):
    image_metrics.frechet_distance(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="sigma2 has a negative eigenvalue"):
    image_metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))
  with pytest.raises(ValueError, match="not symmetric"):
    image_metrics.frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]),
                                   np.zeros(2), np.eye(2))


def test_frechet_distance_from_features_matches_1d_formula():
  # 1-D: W2^2 between Gaussians is (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
  rng = np.random.default_rng(3)
  x, y = rng.normal(1.0, 2.0, size=(50, 1)), rng.normal(-0.5, 0.7, size=(40, 1))
  s1, s2 = math.sqrt(np.var(x, ddof=1)), math.sqrt(np.var(y, ddof=1))
  expected = (x.mean() - y.mean()) ** 2 + (s1 - s2) ** 2
  got = image_metrics.frechet_distance_from_features(x, y)
  np.testing.assert_allclose(got, expected, rtol=1e-8)
  mu, sigma = image_metrics.gaussian_statistics(x)
  assert mu.shape == (1,) and sigma.shape == (1, 1)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="covariances"):
    image_metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_inception_score_uniform_one_hot_and_hand_case():
  k = 10
  uniform = np.full((20, k), 1.0 / k)
  np.testing.assert_allclose(image_metrics.inception_score(uniform), 1.0, rtol=1e-12)
  one_hot = np.eye(k)[np.arange(20) % k]
  # log IS = mean KL(one-hot || uniform marginal) = log K.
  np.testing.assert_allclose(math.log(image_metrics.inception_score(one_hot)), math.log(k),
                             rtol=1e-12)
  # Two splits of 10, each balanced: still K.
  np.testing.assert_allclose(image_metrics.inception_score(one_hot, split_size=10), k, rtol=1e-12)
  # p1 = [1, 0], p2 = [.5, .5]: marginal [.75, .25]; KL1 = log 4/3, KL2 = .5 log 4/3.
  probs = np.array([[1.0, 0.0], [0.5, 0.5]])
  np.testing.assert_allclose(image_metrics.inception_score(probs), (4 / 3) ** 0.75, rtol=1e-12)


def test_inception_score_rejects_logits():
  with pytest.raises(ValueError, match="softmax"):
    image_metrics.inception_score(np.array([[2.0, -1.0]]))


def test_precision_recall_identical_and_disjoint():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(30, 4))
  assert image_metrics.precision_recall(x, x) == (1.0, 1.0)
  far = x + 1000.0
  assert image_metrics.precision_recall(x, far) == (0.0, 0.0)


def test_precision_recall_hand_drawn_1d_case():
  # Reference 0..4 with k = 3: squared radii [9, 4, 4, 4, 9]; manifold = [-3, 7].
  ref = np.arange(5.0)[:, None]
  np.testing.assert_allclose(image_metrics.manifold_radii(ref, k=3), [9, 4, 4, 4, 9])
  # Samples 6.6, 10..13: radii 5.4, 3, 2, 2, 3 -> manifold [1.2, 12] U [7, 16].
  sample = np.array([6.6, 10, 11, 12, 13])[:, None]
  np.testing.assert_allclose(image_metrics.manifold_radii(sample, k=3),
                             np.array([5.4, 3, 2, 2, 3]) ** 2, rtol=1e-5)
  # Precision: only 6.6 lies in [-3, 7]. Recall: refs 2, 3, 4 lie in [1.2, 16].
  for block in (2, 3, 4096):
    p, r = image_metrics.precision_recall(ref, sample, row_batch_size=block, col_batch_size=block)
    assert (p, r) == (pytest.approx(0.2), pytest.approx(0.6))


def test_precision_recall_matches_brute_force_with_ragged_blocks():
  rng = np.random.default_rng(5)
  ref = rng.normal(size=(23, 3))
  sample = rng.normal(0.5, 1.3, size=(17, 3))

  def radii(f):
    d = np.sum((f[:, None] - f[None]) ** 2, axis=-1)
    return np.sort(d, axis=1)[:, 3]

  d = np.sum((sample[:, None] - ref[None]) ** 2, axis=-1)  # (n_sample, n_ref)
  precision = np.mean(np.any(d <= radii(ref)[None, :], axis=1))
  recall = np.mean(np.any(d <= radii(sample)[:, None], axis=0))
  got = image_metrics.precision_recall(ref, sample, row_batch_size=5, col_batch_size=7)
  np.testing.assert_allclose(got, (precision, recall))
  assert 0 < precision < 1 and 0 < recall < 1


def test_precision_recall_needs_more_than_k_points():
  with pytest.raises(ValueError, match="more than 3"):
    image_metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
