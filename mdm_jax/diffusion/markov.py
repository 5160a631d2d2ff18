"""The paper's "Markov chain" ablation for text: a D3PM-style absorbing chain with x0-prediction.

The forward chain is SEDD's absorbing one (each token becomes [MASK] = id V by time t with
probability ``1 - alpha_t``, ``alpha_t = exp(-sigma(t))``; reuse ``AbsorbingGraph``'s
``sample_transition`` and the noise schedules of ``score_entropy``). The network instead predicts
the clean token, ``p_theta(x0 | x_t)`` as logits, and is trained on the continuous-time limit of
D3PM's variational bound (as in MDLM, Sahoo et al. 2024 / MD4, Shi et al. 2024)::

    -log p(x0) <= E_t [ dsigma e^-sigma / (1 - e^-sigma) sum_{masked i} -log p_theta(x0_i | x_t) ]

(for log-linear noise the weight is 1/t). Unmasked tokens are copied through ("carry-over"),
so they contribute 0. Sampling is D3PM ancestral sampling of the same chain: from t to s < t,
a masked token is revealed with probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` and its
value drawn from ``p_theta(x0 | x_t)`` (``absorbing_ancestral_step``; the full loop is
``samplers.markov_sample``). Image latents in this ablation use ``samplers.ddpm_sample``.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mdm_jax.diffusion.score_entropy import AbsorbingGraph, broadcast_to_tokens


def _token_logits(x0_logits: jnp.ndarray, x: jnp.ndarray, graph: AbsorbingGraph) -> jnp.ndarray:
  """Validates (..., V) or (..., V+1) logits and returns the V token logits in float32."""
  if not isinstance(graph, AbsorbingGraph):
    raise ValueError(f"the Markov chain is absorbing: pass an AbsorbingGraph, got {graph!r}.")
  v = graph.vocab_size
  if x0_logits.shape not in (x.shape + (v,), x.shape + (v + 1,)):
    raise ValueError(
        f"x0_logits must have shape tokens.shape + (V,) or + (V+1,) = {x.shape + (v,)}, got "
        f"{x0_logits.shape}.")
  return x0_logits[..., :v].astype(jnp.float32)  # a [MASK] column, if present, is ignored


def absorbing_elbo_loss(x0_logits: jnp.ndarray, sigma, dsigma, x_t: jnp.ndarray,
                        x0: jnp.ndarray, graph: AbsorbingGraph,
                        mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Continuous-time absorbing-chain ELBO per token (shape of x0), weighted and >= 0.

  ``dsigma / (e^sigma - 1) * CE(x0_logits, x0)`` at masked positions of x_t, 0 elsewhere.

  Args:
    x0_logits: (..., V) or (..., V+1) logits of p_theta(x0 | x_t); a [MASK] column is ignored.
    sigma, dsigma: noise(t), each broadcastable to x0 (e.g. (b, 1)).
    x_t, x0: int tokens of the same shape.
    graph: the AbsorbingGraph (gives V and the [MASK] id).
    mask: optional; positions where it is 0 (padding, tokens held clean) contribute 0.
  """
  logits = _token_logits(x0_logits, x_t, graph)
  ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, x0[..., None], -1)[..., 0]
  keep = x_t == graph.mask_id
  if mask is not None:
    keep = keep & jnp.broadcast_to(mask, keep.shape).astype(bool)
  # sigma = 0 (text held clean) gives an infinite weight where nothing is masked; keep it out of
  # the graph entirely, or the backward pass computes 0 * inf = NaN.
  sigma = jnp.where(keep, broadcast_to_tokens(sigma, x_t), 1.0)
  weight = jnp.where(keep, broadcast_to_tokens(dsigma, x_t) / jnp.expm1(sigma), 0.0)
  return jnp.where(keep, weight * ce, 0.0)


def absorbing_ancestral_step(rng: jax.Array, x: jnp.ndarray, x0_logits: jnp.ndarray,
                             sigma_t, sigma_s, graph: AbsorbingGraph,
                             temperature: float = 1.0) -> jnp.ndarray:
  """One D3PM ancestral step of the absorbing chain from noise level sigma_t to sigma_s < sigma_t.

  sigma_s = 0 reveals every masked token. x (..., ) int, x0_logits (..., V) or (..., V+1).
  A revealed token is drawn from softmax(logits / temperature); temperature 0 takes the argmax.
  """
  logits = _token_logits(x0_logits, x, graph)
  sigma_t = broadcast_to_tokens(sigma_t, x)
  sigma_s = broadcast_to_tokens(sigma_s, x)
  p_reveal = (jnp.exp(-sigma_s) - jnp.exp(-sigma_t)) / -jnp.expm1(-sigma_t)
  k_reveal, k_tok = jax.random.split(rng)
  if temperature == 0:
    tokens = jnp.argmax(logits, -1).astype(x.dtype)
  else:
    tokens = jax.random.categorical(k_tok, logits / temperature, axis=-1).astype(x.dtype)
  reveal = (x == graph.mask_id) & (jax.random.uniform(k_reveal, x.shape) < p_reveal)
  return jnp.where(reveal, tokens, x)
