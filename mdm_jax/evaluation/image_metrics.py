"""Sample-quality metrics over classifier features: FID, Inception Score, precision/recall.

These follow the ADM evaluation suite (Dhariwal & Nichol, 2021, ``guided-diffusion/evaluations``)
so numbers are comparable with ADM/DiT tables when the features come from the same network:

* Frechet distance between Gaussians fitted to two feature sets (FID when the features are
  InceptionV3 pool_3 activations). The trace of ``(sigma1 sigma2)^(1/2)`` comes from two
  symmetric eigendecompositions instead of ``scipy.linalg.sqrtm``: exact for singular
  covariances (where pytorch-fid and ADM retry with ``eps * I`` added) and the same on every
  numpy/scipy release. Against features with fewer samples than dimensions it is an n x n
  eigenproblem (``frechet_distance_to_features``).
* Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` averaged over splits of ``split_size``.
* Improved precision and recall (Kynkaenniemi et al., 2019): the k-NN manifold estimate with
  k = 3, squared Euclidean distances, and "inside" meaning ``d(x, r) <= radius_k(r)`` for some
  manifold point r (the k-th nearest neighbour counts the point itself as neighbour 0).

The feature matrices can be 50k x 2048; distances are computed in (row, column) blocks with
jit-compiled jax so memory stays at one ``row_batch x col_batch`` block.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of a feature set, as pytorch-fid / ADM compute them.

  Args:
    features: (n, d) array, n >= 2.

  Returns:
    mu (d,) and sigma (d, d), float64; sigma is the unbiased (n - 1) sample covariance.
  """
  features = _as_feature_matrix(features, "features")
  if features.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}.")
  features = features.astype(np.float64)
  return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _trace_sqrt_product(eig1: tuple[np.ndarray, np.ndarray], sigma2: np.ndarray) -> float:
  """``tr((sigma1 sigma2)^(1/2))`` for symmetric PSD (d, d) matrices, exact when singular.

  ``eig1`` is sigma1's symmetric eigendecomposition ``(w1, v1)``. ``sigma1 sigma2`` has the
  eigenvalues of the symmetric PSD ``s = r sigma2 r`` with ``r = sigma1^(1/2)`` (``AB`` and
  ``BA`` share eigenvalues), so the trace of its principal root is ``sum(sqrt(eig(s)))``. Two
  symmetric eigendecompositions need neither the ``eps * I`` retry that pytorch-fid and ADM wrap
  around ``scipy.linalg.sqrtm`` for a singular product (fewer samples than feature dimensions, a
  zero covariance) nor its complex round-off, and they give the same value on every scipy/numpy
  release (``sqrtm``'s handling of singular input has changed between releases, and the retry
  biases the result by about ``eps * d``).
  """
  w1, v1 = eig1
  root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
  s = root1 @ sigma2 @ root1
  w = np.linalg.eigvalsh((s + s.T) / 2.0)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def _checked_eigh(name: str, sigma: np.ndarray, vectors: bool
                  ) -> tuple[np.ndarray, np.ndarray | None]:
  """``sigma``'s eigenvalues (ascending) and, with ``vectors``, eigenvectors, after checking that
  it is a covariance (symmetric, no negative eigenvalue beyond round-off)."""
  scale = max(float(np.max(np.abs(sigma))), 1e-300)
  if not np.allclose(sigma, sigma.T, rtol=0.0, atol=1e-8 * scale):
    raise ValueError(f"FID: {name} is not symmetric; pass a covariance matrix "
                     "(e.g. from gaussian_statistics).")
  w, v = np.linalg.eigh(sigma) if vectors else (np.linalg.eigvalsh(sigma), None)
  if float(w[0]) < -1e-6 * scale:
    raise ValueError(f"FID: {name} has a negative eigenvalue {float(w[0]):g}; a covariance is "
                     "positive semi-definite.")
  return w, v


def _checked_gaussian(mu: np.ndarray, sigma: np.ndarray, d: int | None, name: str
                      ) -> tuple[np.ndarray, np.ndarray]:
  """float64 ``mu`` (d,) and ``sigma`` (d, d), their shapes checked (against ``d`` if given)."""
  mu, sigma = np.atleast_1d(mu).astype(np.float64), np.atleast_2d(sigma).astype(np.float64)
  d = mu.shape[0] if d is None else d
  if mu.shape != (d,):
    raise ValueError(f"means must be two vectors of one length, got {name}'s mean of shape "
                     f"{mu.shape} against length {d}.")
  if sigma.shape != (d, d):
    raise ValueError(f"covariances must be ({d}, {d}) to match the means, got {name}'s "
                     f"{sigma.shape}.")
  return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

  ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``, with the trace of the root
  computed exactly for singular covariances too (see ``_trace_sqrt_product``).

  Args:
    mu1, mu2: (d,) means.
    sigma1, sigma2: (d, d) symmetric positive semi-definite covariances.

  Returns:
    The distance as a Python float.
  """
  mu1, sigma1 = _checked_gaussian(mu1, sigma1, None, "the first")
  mu2, sigma2 = _checked_gaussian(mu2, sigma2, mu1.shape[0], "the second")
  eig1 = _checked_eigh("sigma1", sigma1, vectors=True)
  _checked_eigh("sigma2", sigma2, vectors=False)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * _trace_sqrt_product(eig1, sigma2))


def frechet_distance_to_features(mu1: np.ndarray, sigma1: np.ndarray,
                                 features2: np.ndarray) -> float:
  """``frechet_distance(mu1, sigma1, *gaussian_statistics(features2))``: a reference's
  statistics against the Gaussian fitted to (n, d) features, e.g. of generated samples.

  With fewer samples than dimensions (n <= d) the trace of the root comes from an n x n
  eigenproblem: with ``y`` the centred features, ``sigma2 = y^T y / (n - 1)`` and
  ``sigma1 sigma2`` has the nonzero eigenvalues of the symmetric PSD
  ``y sigma1 y^T / (n - 1)`` (``AB`` and ``BA`` share them), so neither sigma2 nor a d x d
  eigendecomposition beyond sigma1's check is formed (16 samples at InceptionV3's d = 2048:
  0.57 s against 2.23 s for the two-eigendecomposition form). Exact, as ``frechet_distance``
  is; n > d (and n < 2, which ``gaussian_statistics`` refuses) take ``frechet_distance``.
  """
  features2 = _as_feature_matrix(features2, "features2").astype(np.float64)
  n, d = features2.shape
  if not 2 <= n <= d:
    return frechet_distance(mu1, sigma1, *gaussian_statistics(features2))
  mu1, sigma1 = _checked_gaussian(mu1, sigma1, d, "the first")
  _checked_eigh("sigma1", sigma1, vectors=False)
  mu2 = features2.mean(axis=0)
  y = features2 - mu2
  gram = y @ sigma1 @ y.T / (n - 1)
  w = np.linalg.eigvalsh((gram + gram.T) / 2.0)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.sum(y * y) / (n - 1)
               - 2.0 * np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID-style distance between two (n, d) feature sets (Gaussian fit, then closed form)."""
  return frechet_distance_to_features(*gaussian_statistics(features1), features2)


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
  """Inception Score ``exp(mean_x KL(p(y|x) || p_split(y)))`` averaged over splits (as ADM).

  Args:
    probs: (n, num_classes) class probabilities (softmax of the classifier logits); rows sum
      to 1.
    split_size: samples per split; ADM uses 5000 (10 splits of 50k). The marginal p(y) is
      estimated within each split, and the split scores are averaged.

  Returns:
    The mean score over splits: 1 when every p(y|x) equals the marginal, num_classes when
    predictions are one-hot and the classes are balanced.
  """
  probs = _as_feature_matrix(probs, "probs").astype(np.float64)
  if split_size < 1:
    raise ValueError(f"split_size must be positive, got {split_size}.")
  if np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
    raise ValueError("probs rows must be probability vectors (non-negative, summing to 1); "
                     "apply a softmax to logits first.")
  scores = []
  for start in range(0, probs.shape[0], split_size):
    part = probs[start:start + split_size]
    marginal = part.mean(axis=0, keepdims=True)
    # 0 log 0 = 0 (one-hot rows are valid input); where part > 0 the marginal is > 0 too.
    positive = part > 0
    log_ratio = np.log(np.where(positive, part, 1.0)) - np.log(np.where(positive, marginal, 1.0))
    scores.append(np.exp(np.sum(part * log_ratio, axis=1).mean()))
  return float(np.mean(scores))


@jax.jit
def _squared_distances(u: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """(r, d), (c, d) -> (r, c) squared Euclidean distances, clamped at 0 as ADM does."""
  uu = jnp.sum(u * u, axis=1)[:, None]
  vv = jnp.sum(v * v, axis=1)[None, :]
  uv = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(uu - 2.0 * uv + vv, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_nearest(running: jnp.ndarray, u: jnp.ndarray, v: jnp.ndarray, k: int) -> jnp.ndarray:
  """Keeps the k+1 smallest squared distances of each row of u over columns seen so far."""
  both = jnp.concatenate([running, _squared_distances(u, v)], axis=1)
  return -jax.lax.top_k(-both, k + 1)[0]


@jax.jit
def _inside_block(rows: jnp.ndarray, row_radii: jnp.ndarray, cols: jnp.ndarray,
                  col_radii: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Which rows lie in the cols' manifold, and which cols lie in the rows' manifold."""
  d = _squared_distances(rows, cols)
  rows_in = jnp.any(d <= col_radii[None, :], axis=1)
  cols_in = jnp.any(d <= row_radii[:, None], axis=0)
  return rows_in, cols_in


def manifold_radii(features: np.ndarray, k: int = 3, row_batch_size: int = 4096,
                   col_batch_size: int = 4096) -> np.ndarray:
  """Squared distance from each point to its k-th nearest neighbour within the same set.

  Args:
    features: (n, d) with n > k.
    k: neighbourhood size; the point itself is neighbour 0 (so, without duplicates, this is the
      k-th nearest *other* point), as in ADM's ``ManifoldEstimator``.
    row_batch_size, col_batch_size: block sizes of the distance computation.

  Returns:
    (n,) float32 squared radii.
  """
  features = _as_feature_matrix(features, "features").astype(np.float32)
  n = features.shape[0]
  if n <= k:
    raise ValueError(f"a k={k} manifold needs more than {k} points, got {n}.")
  radii = np.empty((n,), np.float32)
  for r0 in range(0, n, row_batch_size):
    rows = features[r0:r0 + row_batch_size]
    running = jnp.full((rows.shape[0], k + 1), jnp.inf, jnp.float32)
    for c0 in range(0, n, col_batch_size):
      running = _merge_nearest(running, rows, features[c0:c0 + col_batch_size], k)
    radii[r0:r0 + rows.shape[0]] = np.asarray(running[:, k])
  return radii


def precision_recall(reference_features: np.ndarray, sample_features: np.ndarray, k: int = 3,
                     row_batch_size: int = 4096, col_batch_size: int = 4096
                     ) -> tuple[float, float]:
  """Improved precision and recall (Kynkaenniemi et al., 2019), as ADM's evaluator.

  Precision: fraction of samples inside the reference manifold (within the k-NN radius of some
  reference point). Recall: fraction of references inside the sample manifold.

  Args:
    reference_features: (n_ref, d), n_ref > k.
    sample_features: (n_sample, d), n_sample > k.
    k: neighbourhood size (ADM: 3).
    row_batch_size, col_batch_size: block sizes; one block holds row x col float32 distances.

  Returns:
    (precision, recall) as Python floats in [0, 1].
  """
  ref = _as_feature_matrix(reference_features, "reference_features").astype(np.float32)
  sample = _as_feature_matrix(sample_features, "sample_features").astype(np.float32)
  if ref.shape[1] != sample.shape[1]:
    raise ValueError(f"feature dimensions differ: reference {ref.shape[1]}, sample "
                     f"{sample.shape[1]}.")
  ref_radii = manifold_radii(ref, k, row_batch_size, col_batch_size)
  sample_radii = manifold_radii(sample, k, row_batch_size, col_batch_size)
  sample_in = np.zeros((sample.shape[0],), bool)
  ref_in = np.zeros((ref.shape[0],), bool)
  for s0 in range(0, sample.shape[0], row_batch_size):
    s1 = s0 + row_batch_size
    for r0 in range(0, ref.shape[0], col_batch_size):
      r1 = r0 + col_batch_size
      rows_in, cols_in = _inside_block(sample[s0:s1], sample_radii[s0:s1], ref[r0:r1],
                                       ref_radii[r0:r1])
      sample_in[s0:s1] |= np.asarray(rows_in)
      ref_in[r0:r1] |= np.asarray(cols_in)
  return float(sample_in.mean()), float(ref_in.mean())


def _as_feature_matrix(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty (n, d) matrix, got shape {x.shape}.")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contains NaN or inf values.")
  return x
