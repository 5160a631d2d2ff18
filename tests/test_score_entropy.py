"""SEDD noise, graphs and score entropy against numpy oracles built from the rate matrix.

The oracle for the loss is the general denoising score entropy (SEDD eq. 5) with the
transition kernel from ``scipy.linalg.expm(sigma Q)``:

    L = sum_{y != x} Q[x, y] (s_y - r_y log s_y + r_y (log r_y - 1)),
    r_y = P[y, x0] / P[x, x0],   P = expm(sigma Q),   Q column-convention (rate x -> y at Q[y, x]).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from mdm_jax.diffusion import score_entropy as se

V = 4


def q_absorbing(v):
  n = v + 1
  q = np.zeros((n, n))
  for x in range(v):
    q[v, x] += 1.0  # x -> MASK at rate 1
    q[x, x] -= 1.0
  return q


def q_uniform(v):
  return np.ones((v, v)) / v - np.eye(v)


def dse_oracle(q, log_score, sigma, x, x0):
  """Denoising score entropy at one position, from the rate matrix (float64)."""
  p = expm(sigma * q)
  total = 0.0
  for y in range(q.shape[0]):
    if y == x or q[x, y] == 0:
      continue
    r = p[y, x0] / p[x, x0]
    s = np.exp(log_score[y])
    k = r * (np.log(r) - 1) if r > 0 else 0.0
    total += q[x, y] * (s - r * log_score[y] + k)
  return total


def true_log_ratio(q, sigma, x, x0):
  p = expm(sigma * q)
  with np.errstate(divide="ignore"):
    return np.log(p[:, x0] / p[x, x0])


# ------------------------------------------------------------------------------------ noise


def test_log_linear_noise_formula_and_rate():
  noise = se.LogLinearNoise(eps=1e-3)
  t = np.linspace(0.0, 1.0, 11, dtype=np.float32)
  sigma, dsigma = noise(t)
  np.testing.assert_allclose(np.asarray(sigma), -np.log(1 - (1 - 1e-3) * t.astype(np.float64)),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(dsigma), np.asarray(jax.vmap(jax.grad(noise.total))(t)),
                             rtol=1e-5)
  h = 1e-3
  tt = np.linspace(0.1, 0.9, 5)
  fd = (-np.log(1 - 0.999 * (tt + h)) + np.log(1 - 0.999 * (tt - h))) / (2 * h)
  np.testing.assert_allclose(np.asarray(noise(tt)[1]), fd, rtol=1e-4)


def test_geometric_noise_formula_and_rate():
  noise = se.GeometricNoise(sigma_min=1e-4, sigma_max=20.0)
  t = np.linspace(0.0, 1.0, 11, dtype=np.float32)
  sigma, dsigma = noise(t)
  np.testing.assert_allclose(np.asarray(sigma), 1e-4**(1 - t) * 20.0**t, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dsigma), np.asarray(jax.vmap(jax.grad(noise.total))(t)),
                             rtol=1e-4)


# ------------------------------------------------------------------------------ score entropy


def _cases(graph_kind, rng, n=12):
  """(log_score, sigma, x_t, x0) small cases covering masked/unmasked, same/different."""
  dim = V + 1 if graph_kind == "absorbing" else V
  x0 = rng.integers(0, V, size=n)
  if graph_kind == "absorbing":
    x_t = np.where(np.arange(n) % 3 == 0, x0, V)
  else:
    x_t = np.where(np.arange(n) % 2 == 0, x0, rng.integers(0, V, size=n))
  sigma = rng.uniform(0.05, 3.0, size=n)
  log_score = rng.normal(size=(n, dim))
  return log_score, sigma, x_t, x0


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_score_entropy_matches_rate_matrix_oracle(kind):
  graph = se.AbsorbingGraph(V) if kind == "absorbing" else se.UniformGraph(V)
  q = q_absorbing(V) if kind == "absorbing" else q_uniform(V)
  log_score, sigma, x_t, x0 = _cases(kind, np.random.default_rng(0))
  got = graph.score_entropy(jnp.asarray(log_score, jnp.float32)[:, None],
                            jnp.asarray(sigma)[:, None], jnp.asarray(x_t)[:, None],
                            jnp.asarray(x0)[:, None])[:, 0]
  want = [dse_oracle(q, log_score[i], sigma[i], x_t[i], x0[i]) for i in range(len(x0))]
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=1e-5)
  assert np.all(np.asarray(got) >= -1e-5)
  if kind == "absorbing":
    assert np.all(np.asarray(got)[x_t != V] == 0.0)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_score_entropy_zero_at_true_ratio_and_positive_elsewhere(kind):
  graph = se.AbsorbingGraph(V) if kind == "absorbing" else se.UniformGraph(V)
  q = q_absorbing(V) if kind == "absorbing" else q_uniform(V)
  _, sigma, x_t, x0 = _cases(kind, np.random.default_rng(1))
  true = np.stack([true_log_ratio(q, sigma[i], x_t[i], x0[i]) for i in range(len(x0))])
  true = np.where(np.isfinite(true), true, -1e4)  # zero ratios: exp(-1e4) == 0 in float32
  args = (jnp.asarray(sigma, jnp.float32), jnp.asarray(x_t), jnp.asarray(x0))
  at_truth = graph.score_entropy(jnp.asarray(true, jnp.float32), *args)
  np.testing.assert_allclose(np.asarray(at_truth), 0.0, atol=2e-5)
  perturbed = true + np.random.default_rng(2).normal(scale=0.3, size=true.shape)
  off = np.asarray(graph.score_entropy(jnp.asarray(perturbed, jnp.float32), *args))
  informative = x_t == V if kind == "absorbing" else np.ones_like(x_t, bool)
  assert np.all(off[informative] > 1e-4)


def test_absorbing_loss_weighting_mask_and_finite_grads():
  graph = se.AbsorbingGraph(V)
  noise = se.LogLinearNoise()
  rng = np.random.default_rng(3)
  x0 = jnp.asarray(rng.integers(0, V, size=(2, 6)))
  t = jnp.array([0.3, 0.8])
  sigma, dsigma = noise(t)
  x_t = graph.sample_transition(jax.random.PRNGKey(0), x0, sigma[:, None])
  log_score = jnp.asarray(rng.normal(size=(2, 6, V + 1)), jnp.float32)
  # Huge values at unmasked positions must neither leak into the loss nor its gradient.
  log_score = jnp.where((x_t == V)[..., None], log_score, 1e4)
  mask = jnp.asarray(rng.integers(0, 2, size=(2, 6)), bool)
  loss = se.score_entropy_loss(log_score, sigma[:, None], dsigma[:, None], x_t, x0, graph, mask)
  raw = np.asarray(graph.score_entropy(log_score, sigma[:, None], x_t, x0))
  np.testing.assert_allclose(np.asarray(loss),
                             np.where(np.asarray(mask), np.asarray(dsigma)[:, None] * raw, 0.0),
                             rtol=1e-6)
  grad = jax.grad(lambda ls: se.score_entropy_loss(ls, sigma[:, None], dsigma[:, None], x_t, x0,
                                                   graph).sum())(log_score)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_shape_errors():
  graph = se.AbsorbingGraph(V)
  with pytest.raises(ValueError, match="log_score"):
    graph.score_entropy(jnp.zeros((2, 3, V)), 1.0, jnp.zeros((2, 3), int),
                        jnp.zeros((2, 3), int))
  with pytest.raises(ValueError, match="sigma"):
    graph.sample_transition(jax.random.PRNGKey(0), jnp.zeros((2, 3), int), jnp.ones((3, 2)))
  with pytest.raises(ValueError):
    se.LogLinearNoise(eps=0.0)


# ------------------------------------------------------------------------- transitions


def _binomial_ok(count, n, p, z=5.0):
  return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p)) + 1


def test_absorbing_sample_transition_rate():
  graph = se.AbsorbingGraph(V)
  sig = np.array([0.1, 0.7, 2.0], np.float32)
  n_per = 20000
  x0 = jnp.asarray(np.random.default_rng(4).integers(0, V, size=(3, n_per)))
  x_t = np.asarray(graph.sample_transition(jax.random.PRNGKey(1), x0, jnp.asarray(sig)[:, None]))
  for row, s in enumerate(sig):
    masked = x_t[row] == V
    assert _binomial_ok(masked.sum(), n_per, 1 - np.exp(-s)), (s, masked.mean())
    np.testing.assert_array_equal(x_t[row][~masked], np.asarray(x0)[row][~masked])


def test_uniform_sample_transition_rate():
  graph = se.UniformGraph(V)
  n_per, s = 20000, 0.5
  x0 = jnp.asarray(np.random.default_rng(5).integers(0, V, size=(n_per,)))
  x_t = np.asarray(graph.sample_transition(jax.random.PRNGKey(2), x0, s))
  p_change = (1 - np.exp(-s)) * (1 - 1 / V)  # a redraw can land on the same token
  assert _binomial_ok((x_t != np.asarray(x0)).sum(), n_per, p_change)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_analytic_step_is_exact_bayes_posterior(kind):
  """staggered_score * transp_transition with exact scores = p(x_s = y | x_t = x)."""
  graph = se.AbsorbingGraph(V) if kind == "absorbing" else se.UniformGraph(V)
  q = q_absorbing(V) if kind == "absorbing" else q_uniform(V)
  dim = q.shape[0]
  p0 = np.zeros(dim)
  p0[:V] = np.random.default_rng(6).dirichlet(np.ones(V))
  sigma, dsig = 1.3, 0.4
  p_t = expm(sigma * q) @ p0
  p_s = expm((sigma - dsig) * q) @ p0
  for x in range(dim):
    if p_t[x] == 0:
      continue
    post = p_s * expm(dsig * q)[x, :] / p_t[x]  # Bayes: p(y at s) p(x at t | y at s) / p(x)
    score = jnp.asarray(p_t / p_t[x], jnp.float32)[None]
    xi = jnp.array([x])
    got = graph.staggered_score(score, jnp.array([dsig])) * graph.transp_transition(xi, dsig)
    np.testing.assert_allclose(np.asarray(got)[0], post, atol=2e-5)


def test_reverse_rate_rows_sum_to_zero():
  graph = se.AbsorbingGraph(V)
  x = jnp.array([V, 1])
  score = jnp.asarray(np.random.default_rng(7).uniform(0.1, 2, size=(2, V + 1)), jnp.float32)
  rate = np.asarray(graph.reverse_rate(x, score))
  np.testing.assert_allclose(rate.sum(-1), 0.0, atol=1e-6)
  np.testing.assert_allclose(rate[0, :V], np.asarray(score)[0, :V], rtol=1e-6)  # MASK -> y
  np.testing.assert_allclose(rate[1], 0.0)  # an unmasked token never moves in reverse
