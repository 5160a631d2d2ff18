"""The absorbing Markov-chain (D3PM-style) ablation: its ELBO loss and ancestral sampler."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import markov
from mdm_jax.diffusion import samplers
from mdm_jax.diffusion import score_entropy as se

V = 5
GRAPH = se.AbsorbingGraph(V)
NOISE = se.LogLinearNoise(eps=1e-3)


def test_loss_matches_hand_computation():
  rng = np.random.default_rng(0)
  x0 = rng.integers(0, V, size=(2, 6))
  x_t = np.where(rng.uniform(size=(2, 6)) < 0.5, V, x0)
  logits = rng.normal(size=(2, 6, V + 1)).astype(np.float32)
  t = np.array([0.25, 0.6])
  sigma, dsigma = (np.asarray(a) for a in NOISE(t))
  got = markov.absorbing_elbo_loss(jnp.asarray(logits), sigma[:, None], dsigma[:, None],
                                   jnp.asarray(x_t), jnp.asarray(x0), GRAPH)
  lg = logits[..., :V].astype(np.float64)  # the [MASK] column is ignored
  log_p = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_p, x0[..., None], -1)[..., 0]
  # For log-linear noise dsigma e^-sigma / (1 - e^-sigma) = 1 / t (the MDLM weight).
  want = np.where(x_t == V, ce / t[:, None], 0.0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(got) >= 0)


def test_loss_zero_at_one_hot_truth_and_mask():
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.integers(0, V, size=(3, 8)))
  sigma, dsigma = NOISE(jnp.array([0.2, 0.5, 0.9]))
  x_t = GRAPH.sample_transition(jax.random.PRNGKey(0), x0, sigma[:, None])
  assert int((x_t == V).sum()) > 0
  perfect = 60.0 * jax.nn.one_hot(x0, V)
  loss = markov.absorbing_elbo_loss(perfect, sigma[:, None], dsigma[:, None], x_t, x0, GRAPH)
  assert float(loss.max()) < 1e-20
  wrong = 60.0 * jax.nn.one_hot((x0 + 1) % V, V)
  loss_wrong = markov.absorbing_elbo_loss(wrong, sigma[:, None], dsigma[:, None], x_t, x0, GRAPH)
  assert float(loss_wrong.min()) >= 0 and float(loss_wrong.sum()) > 1.0
  none = markov.absorbing_elbo_loss(wrong, sigma[:, None], dsigma[:, None], x_t, x0, GRAPH,
                                    mask=jnp.zeros(x0.shape, bool))
  assert float(jnp.abs(none).max()) == 0.0


def test_bad_inputs():
  with pytest.raises(ValueError, match="AbsorbingGraph"):
    markov.absorbing_elbo_loss(jnp.zeros((2, V)), 1.0, 1.0, jnp.zeros(2, int), jnp.zeros(2, int),
                               se.UniformGraph(V))
  with pytest.raises(ValueError, match="x0_logits"):
    markov.absorbing_elbo_loss(jnp.zeros((2, V + 2)), 1.0, 1.0, jnp.zeros(2, int),
                               jnp.zeros(2, int), GRAPH)


def test_ancestral_step_reveal_probability():
  n = 20000
  x = jnp.full((n,), V)
  sigma_t, sigma_s = 1.2, 0.5
  logits = jnp.zeros((n, V))
  out = np.asarray(markov.absorbing_ancestral_step(jax.random.PRNGKey(3), x, logits, sigma_t,
                                                   sigma_s, GRAPH))
  p = (np.exp(-sigma_s) - np.exp(-sigma_t)) / (1 - np.exp(-sigma_t))
  revealed = (out != V).sum()
  assert abs(revealed - n * p) <= 5 * np.sqrt(n * p * (1 - p))
  # an unmasked token is never changed
  kept = markov.absorbing_ancestral_step(jax.random.PRNGKey(4), jnp.arange(V), jnp.zeros((V, V)),
                                         sigma_t, 0.0, GRAPH)
  np.testing.assert_array_equal(np.asarray(kept), np.arange(V))


def test_markov_sample_reproduces_factorised_marginals():
  b, length = 3000, 3
  p0 = np.random.default_rng(5).dirichlet(np.ones(V), size=length)  # (L, V)
  # Exact x0 posterior of a factorised distribution at a masked position is p0 itself.
  logits_fn = lambda x, sigma: jnp.broadcast_to(jnp.log(jnp.asarray(p0, jnp.float32)),
                                                x.shape + (V,))
  clean_mask = jnp.zeros((b, length), bool).at[:, 1].set(True)
  clean_tokens = jnp.full((b, length), 2)
  out = jax.jit(lambda key: samplers.markov_sample(
      logits_fn, GRAPH, NOISE, (b, length), key, steps=8, clean_mask=clean_mask,
      clean_tokens=clean_tokens))(jax.random.PRNGKey(6))
  out = np.asarray(out)
  assert np.all(out[:, 1] == 2)
  for pos in (0, 2):
    freq = np.bincount(out[:, pos], minlength=V + 1) / b
    assert freq[V] == 0
    np.testing.assert_allclose(freq[:V], p0[pos], atol=0.03)
