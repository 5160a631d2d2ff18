"""Perplexity of the text diffusion model from the SEDD evidence bound (Lou et al., 2024).

For a discrete diffusion with noise sigma(t), t in [0, 1], SEDD's bound on a sequence x0 is

    -log p(x0) <= int_0^1 dsigma(t) * sum_i SE_i(x_t, t) dt + KL(p_1(. | x0) || p_base),

with ``SE_i`` the per-token denoising score entropy (``AbsorbingGraph.score_entropy``, 0 at
unmasked positions) and x_t ~ p_t(. | x0). With the absorbing graph, ``p_1`` is all [MASK] up
to ``exp(-sigma(1))`` (1e-3 for the default log-linear noise) and the prior term is negligible
and dropped, as SEDD's evaluation does. The integral is estimated by Monte Carlo: draw
t ~ U(0, 1) (and x_t) K times per sequence and average ``dsigma(t) * SE`` -- the same weighted
loss the training step computes. Perplexity is then ``exp(sum of bounds / number of tokens)``,
an upper bound on the true perplexity up to Monte-Carlo noise (SEDD uses K = 1000 for
its reported numbers; a few tens already give a stable estimate on small models).

Only positions that count as generated text belong in the token count (not padding, not a
clean conditioning prefix); mask them out of the losses and pass the matching count.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def sedd_nll_bound(weighted_losses: jnp.ndarray, mask: jnp.ndarray | None = None
                   ) -> jnp.ndarray:
  """Monte-Carlo SEDD bound per sequence, in nats.

  Args:
    weighted_losses: (K, b, l) ``dsigma(t_k) * score_entropy`` for K independent (t, x_t)
      draws per sequence.
    mask: optional (b, l) (or broadcastable) 1 where a token counts, 0 elsewhere.

  Returns:
    (b,) estimates of ``-log p(x0)`` upper bounds: mean over the K draws, summed over tokens.
  """
  weighted_losses = jnp.asarray(weighted_losses)
  if weighted_losses.ndim != 3:
    raise ValueError(f"weighted_losses must be (num_t_samples, batch, length), got shape "
                     f"{weighted_losses.shape}.")
  if mask is not None:
    weighted_losses = weighted_losses * jnp.asarray(mask, weighted_losses.dtype)
  return weighted_losses.mean(axis=0).sum(axis=-1)


def perplexity_from_elbo(nll_per_token_sum, num_tokens) -> float:
  """``exp(total negative ELBO / number of tokens)``.

  Args:
    nll_per_token_sum: the bound summed over the tokens of the evaluated corpus, in nats (a
      scalar, or per-sequence values such as ``sedd_nll_bound``'s output, which are summed).
    num_tokens: the number of tokens that sum covers (scalar or per-sequence counts, summed).

  Returns:
    Perplexity as a Python float (>= 1 for a valid bound).
  """
  total = float(np.sum(np.asarray(nll_per_token_sum, np.float64)))
  count = float(np.sum(np.asarray(num_tokens, np.float64)))
  if not count > 0:
    raise ValueError(f"num_tokens must be positive, got {count}.")
  if not math.isfinite(total):
    raise ValueError(f"the summed bound is not finite ({total}); check the losses for NaN/inf.")
  return math.exp(total / count)
