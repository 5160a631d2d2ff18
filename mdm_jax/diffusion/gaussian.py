"""Continuous variance-preserving (VP) diffusion for image latents.

Forward process (t in [0, 1], t = 0 clean)::

    x_t = alpha(t) x_0 + sigma(t) eps,   eps ~ N(0, I),   alpha^2 + sigma^2 = 1

with ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)`` and the half log signal-to-noise ratio
``lambda = log(alpha / sigma)`` (the time variable of DPM-Solver). The network is trained by
denoising score matching, the continuous-state case of score entropy: it predicts ``eps``
(equivalently the score ``-eps / sigma``) or the velocity ``v = alpha eps - sigma x_0``.

Times broadcast against data as a leading batch axis: ``t`` is a scalar or has shape ``(b,)``
for data of shape ``(b, ...)``.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

_KINDS = ("linear", "cosine")
TARGETS = ("eps", "v")


def _bcast(coef: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """Reshapes a scalar or (b,) coefficient to broadcast against x of shape (b, ...)."""
  coef = jnp.asarray(coef)
  if coef.ndim == 0:
    return coef
  if coef.ndim != 1 or coef.shape[0] != x.shape[0]:
    raise ValueError(
        f"time-like array of shape {coef.shape} does not match data of shape {x.shape}; pass a "
        "scalar or a (batch,) vector.")
  return coef.reshape(coef.shape + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class VPSchedule:
  """A VP noise schedule ``abar(t)``; build it with ``VPSchedule.linear`` or ``.cosine``.

  Attributes:
    kind: "linear" (score_sde's VP SDE) or "cosine" (Nichol & Dhariwal, 2021).
    beta_min, beta_max: linear schedule, ``log abar = -(beta_min t + (beta_max-beta_min) t^2/2)``.
    s: cosine offset; ``abar(u) = cos^2((u+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)``.
    t_max: cosine only. The cosine ``abar`` reaches 0 (logSNR -inf) at u = 1, so, as DPM-Solver
      does, our t in [0, 1] maps to u = t * t_max with t_max = 0.9946 (abar(1) ~ 7e-5,
      lambda(1) ~ -4.8), keeping every quantity finite at t = 1.
  """
  kind: str = "linear"
  beta_min: float = 0.1
  beta_max: float = 20.0
  s: float = 0.008
  t_max: float = 0.9946

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise ValueError(f"VPSchedule kind must be one of {_KINDS}, got {self.kind!r}.")
    if self.kind == "linear" and not 0 <= self.beta_min <= self.beta_max:
      raise ValueError(
          f"need 0 <= beta_min <= beta_max, got beta_min={self.beta_min}, "
          f"beta_max={self.beta_max}.")
    if self.kind == "cosine" and not (self.s > 0 and 0 < self.t_max < 1):
      raise ValueError(f"need s > 0 and 0 < t_max < 1, got s={self.s}, t_max={self.t_max}.")

  @classmethod
  def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> VPSchedule:
    return cls(kind="linear", beta_min=float(beta_min), beta_max=float(beta_max))

  @classmethod
  def cosine(cls, s: float = 0.008, t_max: float = 0.9946) -> VPSchedule:
    return cls(kind="cosine", s=float(s), t_max=float(t_max))

  def _angle(self, u):
    return (u + self.s) / (1.0 + self.s) * (math.pi / 2)

  def log_alpha(self, t) -> jnp.ndarray:
    """log alpha(t) = log abar(t) / 2."""
    t = jnp.asarray(t, jnp.float32)
    if self.kind == "linear":
      return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
    return jnp.log(jnp.cos(self._angle(t * self.t_max))) - math.log(math.cos(self._angle(0.0)))

  def alpha(self, t) -> jnp.ndarray:
    return jnp.exp(self.log_alpha(t))

  def sigma(self, t) -> jnp.ndarray:
    return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

  def lambda_(self, t) -> jnp.ndarray:
    """Half logSNR ``log(alpha / sigma)``; decreasing in t, +inf at t = 0."""
    log_alpha = self.log_alpha(t)
    return log_alpha - 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))

  def t_of_lambda(self, lam) -> jnp.ndarray:
    """Inverse of ``lambda_`` (closed form for both kinds)."""
    lam = jnp.asarray(lam, jnp.float32)
    neg_log_abar = jnp.logaddexp(0.0, -2.0 * lam)  # -log abar = log(1 + exp(-2 lambda))
    if self.kind == "linear":
      b0, b1 = self.beta_min, self.beta_max
      # Root of (b1-b0)/2 t^2 + b0 t - L = 0, in the form that stays finite when b1 == b0.
      return 2.0 * neg_log_abar / (b0 + jnp.sqrt(b0**2 + 2.0 * (b1 - b0) * neg_log_abar))
    log_cos = -0.5 * neg_log_abar + math.log(math.cos(self._angle(0.0)))
    u = 2.0 * (1.0 + self.s) / math.pi * jnp.arccos(jnp.exp(log_cos)) - self.s
    return u / self.t_max


def q_sample(sched: VPSchedule, x0: jnp.ndarray, t, eps: jnp.ndarray) -> jnp.ndarray:
  """x_t = alpha(t) x0 + sigma(t) eps; x0, eps (b, ...), t scalar or (b,)."""
  return _bcast(sched.alpha(t), x0) * x0 + _bcast(sched.sigma(t), x0) * eps


def v_target(sched: VPSchedule, x0: jnp.ndarray, eps: jnp.ndarray, t) -> jnp.ndarray:
  """Velocity v = alpha eps - sigma x0 (Salimans & Ho, 2022)."""
  return _bcast(sched.alpha(t), x0) * eps - _bcast(sched.sigma(t), x0) * x0


def eps_to_x0(sched: VPSchedule, eps: jnp.ndarray, x_t: jnp.ndarray, t) -> jnp.ndarray:
  return (x_t - _bcast(sched.sigma(t), x_t) * eps) / _bcast(sched.alpha(t), x_t)


def x0_to_eps(sched: VPSchedule, x0: jnp.ndarray, x_t: jnp.ndarray, t) -> jnp.ndarray:
  return (x_t - _bcast(sched.alpha(t), x_t) * x0) / _bcast(sched.sigma(t), x_t)


def v_to_x0(sched: VPSchedule, v: jnp.ndarray, x_t: jnp.ndarray, t) -> jnp.ndarray:
  return _bcast(sched.alpha(t), x_t) * x_t - _bcast(sched.sigma(t), x_t) * v


def v_to_eps(sched: VPSchedule, v: jnp.ndarray, x_t: jnp.ndarray, t) -> jnp.ndarray:
  return _bcast(sched.sigma(t), x_t) * x_t + _bcast(sched.alpha(t), x_t) * v


def eps_to_v(sched: VPSchedule, eps: jnp.ndarray, x_t: jnp.ndarray, t) -> jnp.ndarray:
  """v from an eps prediction: v = (eps - sigma x_t) / alpha."""
  return (eps - _bcast(sched.sigma(t), x_t) * x_t) / _bcast(sched.alpha(t), x_t)


def dsm_loss(pred: jnp.ndarray, x0: jnp.ndarray, eps: jnp.ndarray, t, sched: VPSchedule,
             target: str = "eps") -> jnp.ndarray:
  """Denoising score matching: per-element squared error, shape of x0 (caller reduces).

  Args:
    pred: network output (b, ...), an eps or v prediction per ``target``.
    x0, eps: the clean data and the noise that made x_t = q_sample(sched, x0, t, eps).
    t: scalar or (b,) times (only used for the v target).
    target: "eps" (||pred - eps||^2, the score loss weighted by sigma^2) or "v".
  """
  if target == "eps":
    want = eps
  elif target == "v":
    want = v_target(sched, x0, eps, t)
  else:
    raise ValueError(f"dsm_loss target must be one of {TARGETS}, got {target!r}.")
  if pred.shape != want.shape:
    raise ValueError(f"pred shape {pred.shape} != target shape {want.shape}.")
  return jnp.square(pred.astype(jnp.float32) - want.astype(jnp.float32))
