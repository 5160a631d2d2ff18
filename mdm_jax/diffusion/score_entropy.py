"""Score-entropy discrete diffusion (SEDD; Lou, Meng & Ermon, ICML 2024) for text tokens.

A port of the math in SEDD's ``noise_lib.py``, ``graph_lib.py`` and ``losses.py`` to JAX
(static shapes, no boolean indexing). Conventions, as in SEDD:

* Rate matrices are column-convention: ``dp_t/dt = dsigma(t) Q p_t``, ``Q[y, x]`` is the rate of
  jumping x -> y and columns sum to 0. ``p(x_t = y | x_0) = expm(sigma(t) Q)[y, x_0]``.
* The network models the concrete score ``s(x_t)_y ~ p_t(y) / p_t(x_t)`` at each position
  (one token changed), as log-scores over ``graph.dim`` states. Samplers exponentiate it.
* AbsorbingGraph: states 0..V-1 are tokens and V is [MASK] (``graph.dim = V + 1``). Only masked
  positions carry information; the log-score entry of the current token must be 0 (ratio 1):
  SEDD's model scatters 0 there. Entries of the MASK column are never read by the loss.
* UniformGraph: ``graph.dim = V`` (no mask state); ``Q = 1 1^T / V - I``.
* ``sigma`` (total noise) broadcasts against the token array's shape, e.g. (b, 1) for tokens
  (b, L). Graph methods never multiply by ``dsigma``; ``score_entropy_loss`` does (SEDD's loss).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------------- noise


@dataclasses.dataclass(frozen=True)
class LogLinearNoise:
  """sigma(t) = -log(1 - (1 - eps) t): the mask probability 1 - e^{-sigma} is (1 - eps) t.

  ``noise(t)`` returns ``(sigma(t), dsigma(t))`` with dsigma = (1 - eps) / (1 - (1 - eps) t).
  """
  eps: float = 1e-3

  def __post_init__(self):
    if not 0 < self.eps < 1:
      raise ValueError(f"LogLinearNoise eps must lie in (0, 1), got {self.eps}.")

  def total(self, t) -> jnp.ndarray:
    return -jnp.log1p(-(1.0 - self.eps) * jnp.asarray(t, jnp.float32))

  def rate(self, t) -> jnp.ndarray:
    return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * jnp.asarray(t, jnp.float32))

  def __call__(self, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self.total(t), self.rate(t)


@dataclasses.dataclass(frozen=True)
class GeometricNoise:
  """sigma(t) = sigma_min^(1-t) sigma_max^t (SEDD's geometric noise, used with UniformGraph)."""
  sigma_min: float = 1e-4
  sigma_max: float = 20.0

  def __post_init__(self):
    if not 0 < self.sigma_min < self.sigma_max:
      raise ValueError(
          f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}.")

  def total(self, t) -> jnp.ndarray:
    t = jnp.asarray(t, jnp.float32)
    return self.sigma_min ** (1.0 - t) * self.sigma_max**t

  def rate(self, t) -> jnp.ndarray:
    return self.total(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))

  def __call__(self, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self.total(t), self.rate(t)


# ---------------------------------------------------------------------------------- graphs


def sample_categorical(rng: jax.Array, probs: jnp.ndarray) -> jnp.ndarray:
  """Samples indices from unnormalised probabilities along the last axis (Gumbel-max, as SEDD).

  Non-positive entries are never drawn unless a whole row is non-positive (then index 0).
  """
  logits = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def broadcast_to_tokens(sigma, x: jnp.ndarray) -> jnp.ndarray:
  """Broadcasts sigma against tokens x; sigma of shape (b,) is read as per-example (b, 1...)."""
  sigma = jnp.asarray(sigma, jnp.float32)
  if sigma.ndim == 1 and x.ndim > 1 and sigma.shape[0] == x.shape[0]:
    sigma = sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))
  try:
    return jnp.broadcast_to(sigma, x.shape)
  except ValueError:
    raise ValueError(
        f"sigma of shape {sigma.shape} does not broadcast to tokens of shape {x.shape}; pass "
        "(b, 1) (or (b,)) for tokens (b, L).") from None


def _check_scores(score: jnp.ndarray, x: jnp.ndarray, dim: int, what: str):
  if score.shape != x.shape + (dim,):
    raise ValueError(
        f"{what} must have shape tokens.shape + (graph.dim,) = {x.shape + (dim,)}, got "
        f"{score.shape}.")


class _Graph:
  """Methods shared by both graphs; subclasses define ``dim`` and ``transp_rate``."""

  def reverse_rate(self, i: jnp.ndarray, score: jnp.ndarray) -> jnp.ndarray:
    """Reverse-time rate out of x_t = i: ``transp_rate(i) * score`` off the diagonal, minus the
    row sum on it (..., dim). ``score`` holds ratios (not log-ratios)."""
    rate = self.transp_rate(i) * score
    on_i = jax.nn.one_hot(i, self.dim, dtype=bool)
    rate = jnp.where(on_i, 0.0, rate)
    return jnp.where(on_i, -rate.sum(-1, keepdims=True), rate)


@dataclasses.dataclass(frozen=True)
class AbsorbingGraph(_Graph):
  """Absorbing ([MASK]) graph: every token jumps to MASK (id ``vocab_size``) at rate dsigma."""
  vocab_size: int

  def __post_init__(self):
    if self.vocab_size < 1:
      raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}.")

  @property
  def dim(self) -> int:
    return self.vocab_size + 1

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @property
  def absorb(self) -> bool:
    return True

  def rate(self, i: jnp.ndarray) -> jnp.ndarray:
    """Column i of Q: rates out of state i (..., dim)."""
    return jax.nn.one_hot(jnp.full_like(i, self.mask_id), self.dim) - jax.nn.one_hot(i, self.dim)

  def transp_rate(self, i: jnp.ndarray) -> jnp.ndarray:
    """Row i of Q: ``Q[i, y]``, the rate y -> i (..., dim); used to build reverse rates."""
    edge = -jax.nn.one_hot(i, self.dim)
    return edge + (i == self.mask_id)[..., None].astype(edge.dtype)

  def transp_transition(self, i: jnp.ndarray, sigma) -> jnp.ndarray:
    """Row i of expm(sigma Q): ``p(x_t = i | x_s = y)`` over y (..., dim)."""
    sigma = broadcast_to_tokens(sigma, i)[..., None]
    edge = jnp.exp(-sigma) * jax.nn.one_hot(i, self.dim)
    return edge + jnp.where((i == self.mask_id)[..., None], self.mask_chance(sigma), 0.0)

  @staticmethod
  def mask_chance(sigma):
    """1 - exp(-sigma): the probability that a token is MASK after total noise sigma."""
    return -jnp.expm1(-sigma)

  def sample_transition(self, rng: jax.Array, x0: jnp.ndarray, sigma) -> jnp.ndarray:
    """Each token independently becomes MASK with probability 1 - exp(-sigma)."""
    move_chance = self.mask_chance(broadcast_to_tokens(sigma, x0))
    move = jax.random.uniform(rng, x0.shape) < move_chance
    return jnp.where(move, self.mask_id, x0).astype(x0.dtype)

  def staggered_score(self, score: jnp.ndarray, dsigma) -> jnp.ndarray:
    """Approximates p_{sigma - dsigma}(z) / p_sigma(x) as e^{-dsigma E} score (SEDD).

    Args:
      score: scores (not log-scores) (..., dim).
      dsigma: noise decrement, broadcastable to score.shape[:-1].
    """
    dsigma = broadcast_to_tokens(dsigma, score[..., 0])[..., None]
    extra = -jnp.expm1(dsigma) * score.sum(-1, keepdims=True)  # (1 - e^dsigma) * sum
    score = score * jnp.exp(dsigma)
    return score.at[..., -1:].add(extra)

  def sample_limit(self, rng: Optional[jax.Array], shape) -> jnp.ndarray:
    """The limit distribution: all MASK. ``rng`` is unused (kept for a common signature)."""
    del rng
    return jnp.full(tuple(shape), self.mask_id, jnp.int32)

  def score_entropy(self, log_score: jnp.ndarray, sigma, x_t: jnp.ndarray,
                    x0: jnp.ndarray) -> jnp.ndarray:
    """Denoising score entropy per token (shape of x0), unweighted by dsigma; 0 where unmasked.

    For a masked position with clean token x0 and r = 1 / (e^sigma - 1) = p(x0|x0)/p(MASK|x0):
    ``sum_{y<V} exp(log_score_y) - r log_score_{x0} + r (log r - 1)``, which is >= 0 and is 0
    exactly when the scores equal the true conditional ratios (r at x0, 0 elsewhere).

    Args:
      log_score: (..., V+1) network log-scores at x_t; the MASK column is ignored.
      sigma: total noise, broadcastable to x0 (e.g. (b, 1)).
      x_t, x0: int tokens of the same shape.
    """
    _check_scores(log_score, x_t, self.dim, "log_score")
    sigma = broadcast_to_tokens(sigma, x_t)
    masked = x_t == self.mask_id
    log_score = jnp.where(masked[..., None], log_score.astype(jnp.float32), 0.0)
    ratio = 1.0 / jnp.expm1(sigma)
    neg = ratio * jnp.take_along_axis(log_score, x0[..., None], axis=-1)[..., 0]
    pos = jnp.exp(log_score[..., :-1]).sum(-1)
    const = ratio * (jnp.log(ratio) - 1.0)
    return jnp.where(masked, pos - neg + const, 0.0)


@dataclasses.dataclass(frozen=True)
class UniformGraph(_Graph):
  """Uniform graph: any token jumps to any other, ``Q = 1 1^T / V - I`` (dim = V, no mask)."""
  vocab_size: int

  def __post_init__(self):
    if self.vocab_size < 2:
      raise ValueError(f"UniformGraph needs vocab_size >= 2, got {self.vocab_size}.")

  @property
  def dim(self) -> int:
    return self.vocab_size

  @property
  def absorb(self) -> bool:
    return False

  def rate(self, i: jnp.ndarray) -> jnp.ndarray:
    n = self.dim
    return jnp.full(i.shape + (n,), 1.0 / n) - jax.nn.one_hot(i, n)

  def transp_rate(self, i: jnp.ndarray) -> jnp.ndarray:
    return self.rate(i)

  def transition(self, i: jnp.ndarray, sigma) -> jnp.ndarray:
    """Column i of expm(sigma Q): p(x_t = . | x_0 = i) (..., dim)."""
    n = self.dim
    sigma = broadcast_to_tokens(sigma, i)[..., None]
    off = -jnp.expm1(-sigma) / n
    return off + jnp.exp(-sigma) * jax.nn.one_hot(i, n)

  def transp_transition(self, i: jnp.ndarray, sigma) -> jnp.ndarray:
    return self.transition(i, sigma)  # symmetric

  def sample_transition(self, rng: jax.Array, x0: jnp.ndarray, sigma) -> jnp.ndarray:
    """With probability 1 - exp(-sigma) each token is redrawn uniformly (possibly itself)."""
    k_move, k_tok = jax.random.split(rng)
    move = jax.random.uniform(k_move, x0.shape) < -jnp.expm1(-broadcast_to_tokens(sigma, x0))
    return jnp.where(move, jax.random.randint(k_tok, x0.shape, 0, self.dim), x0).astype(x0.dtype)

  def staggered_score(self, score: jnp.ndarray, dsigma) -> jnp.ndarray:
    dsigma = broadcast_to_tokens(dsigma, score[..., 0])[..., None]
    epow = jnp.exp(-dsigma)
    return (epow - 1.0) / (self.dim * epow) * score.sum(-1, keepdims=True) + score / epow

  def sample_limit(self, rng: jax.Array, shape) -> jnp.ndarray:
    return jax.random.randint(rng, tuple(shape), 0, self.dim, jnp.int32)

  def score_entropy(self, log_score: jnp.ndarray, sigma, x_t: jnp.ndarray,
                    x0: jnp.ndarray) -> jnp.ndarray:
    """Denoising score entropy per token (shape of x0), unweighted by dsigma (SEDD's formula).

    log_score: (..., V); the entry at x_t is ignored.
    """
    _check_scores(log_score, x_t, self.dim, "log_score")
    n = self.dim
    log_score = log_score.astype(jnp.float32)
    sigma = broadcast_to_tokens(sigma, x_t)
    esigm1 = jnp.expm1(sigma)
    ratio = 1.0 - n / (esigm1 + n)  # true ratio p(y|x0)/p(x0|x0) when x_t == x0, y != x0
    gather = lambda a, idx: jnp.take_along_axis(a, idx[..., None], axis=-1)[..., 0]
    neg = log_score.mean(-1) - gather(log_score, x_t) / n
    same = x_t == x0
    neg = jnp.where(same, ratio * neg, gather(log_score, x0) / esigm1 + neg)
    const = jnp.where(
        same,
        (n - 1) / n * ratio * (jnp.log(ratio) - 1.0),
        ((-jnp.log(ratio) - 1.0) / ratio - (n - 2)) / n)
    sexp = jnp.exp(log_score)
    pos = sexp.mean(-1) - gather(sexp, x_t) / n
    return pos - neg + const


Graph = AbsorbingGraph | UniformGraph


def score_entropy_loss(log_score: jnp.ndarray, sigma, dsigma, x_t: jnp.ndarray, x0: jnp.ndarray,
                       graph: Graph, mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """SEDD's training objective per token: ``dsigma * graph.score_entropy(...)``, shape of x0.

  With t ~ U[eps_t, 1], the sum over tokens (mean over t) is SEDD's denoising score entropy
  (an ELBO bound on -log p for the absorbing graph with enough noise at t = 1).

  Args:
    log_score: (..., graph.dim) network log-scores at x_t (see the module docstring).
    sigma, dsigma: noise(t), each broadcastable to x0 (e.g. (b, 1)).
    x_t, x0: int tokens.
    mask: optional bool/float of x0's shape; positions where it is 0 (padding, tokens held
      clean) contribute 0.
  """
  loss = broadcast_to_tokens(dsigma, x_t) * graph.score_entropy(log_score, sigma, x_t, x0)
  if mask is not None:
    loss = jnp.where(jnp.broadcast_to(mask, loss.shape).astype(bool), loss, 0.0)
  return loss
