"""The diffusion processes of one model, built once from its config and shared by the loss and
the samplers: the image latents' VP schedule, the text noise, the absorbing graph, and how the
network's outputs are read (the image output as eps or v; the text output as the absorbing
log-score form, or x0 logits for the Markov ablation).

Imports nothing from the models: ``Processes.build`` reads the fields it needs from the model
and loss configs.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from mdm_jax.diffusion import gaussian
from mdm_jax.diffusion import score_entropy as se

SCHEDULES = ("linear", "cosine")
TEXT_SCORES = ("conditional", "sedd")
OBJECTIVES = ("score_entropy", "markov")


@dataclasses.dataclass(frozen=True)
class Processes:
  """Both forward processes and the text output's form (hashable: a static jit argument).

  Attributes:
    image: the VP schedule of the (unit-variance) image latents.
    text_noise: sigma(t) of the text's absorbing diffusion.
    graph: the absorbing graph over vocab + [MASK].
    text_score: the absorbing log-score form of the text head (``absorbing_log_score``).
    image_target: what the image head predicts, the loss's target: "eps" or "v"
      (``gaussian.dsm_loss``); the samplers read it back as eps (``image_eps``).
    objective: "score_entropy" (text output read as log-scores) or "markov" (as x0 logits,
      sampled with D3PM; images with DDPM).
  """
  image: gaussian.VPSchedule
  text_noise: se.LogLinearNoise
  graph: se.AbsorbingGraph
  text_score: str = "conditional"
  objective: str = "score_entropy"
  image_target: str = "eps"

  def __post_init__(self):
    if self.image_target not in gaussian.TARGETS:
      raise ValueError(f"loss.image_target must be one of {gaussian.TARGETS}, got "
                       f"{self.image_target!r}")
    if self.text_score not in TEXT_SCORES:
      raise ValueError(f"text_score must be one of {TEXT_SCORES}, got {self.text_score!r}")
    if self.objective not in OBJECTIVES:
      raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")

  @classmethod
  def build(cls, model_cfg, loss_cfg) -> Processes:
    """From an ``MDMConfig`` (vocab_size, text_score) and a ``LossConfig`` (schedule,
    noise_eps, objective, image_target)."""
    if loss_cfg.schedule not in SCHEDULES:
      raise ValueError(f"loss.schedule must be one of {SCHEDULES}, got {loss_cfg.schedule!r}")
    image = (gaussian.VPSchedule.linear() if loss_cfg.schedule == "linear"
             else gaussian.VPSchedule.cosine())
    return cls(image=image, text_noise=se.LogLinearNoise(eps=loss_cfg.noise_eps),
               graph=se.AbsorbingGraph(model_cfg.vocab_size), text_score=model_cfg.text_score,
               objective=loss_cfg.objective, image_target=loss_cfg.image_target)

  @property
  def markov(self) -> bool:
    return self.objective == "markov"

  def image_eps(self, out: jax.Array, z_t: jax.Array, t: jax.Array) -> jax.Array:
    """The image head's output ``out`` at ``(z_t, t)`` read as the noise eps, what every image
    sampler takes: itself for an eps head, ``sigma z_t + alpha v`` for a v head."""
    if self.image_target == "v":
      return gaussian.v_to_eps(self.image, out, z_t, t)
    return out


def absorbing_log_score(raw, sigma, ids_t, vocab_size, form="conditional"):
  """The network output (b, T, V+1) -> absorbing log-scores (b, T, V+1), float32.

  At a masked position the true concrete score is ``p(x0_i = y | unmasked) / (e^sigma - 1)``
  (Ou et al. 2024, "Your absorbing discrete diffusion secretly models the conditional
  distributions of clean data"): a time-free conditional times an analytic factor.

  * ``form="conditional"`` builds exactly that: ``log_softmax(raw[..., :V]) - log(e^sigma - 1)``
    (RADD's form). The score entropy then equals the absorbing ELBO's weighted cross-entropy,
    and the token entries compete through the softmax (on digits this is what makes the yes/no
    VQA answers learnable: docs/findings.md, "The softmax form of the text head's score").
  * ``form="sedd"`` is SEDD's: ``raw - log(e^sigma - 1) - log V``, each entry free (the
    log-ratio of an uninformed model at init; the normaliser must be learnt).

  Either way the current token's own entry is 0 (ratio 1); the [MASK] column is only read there.
  """
  sigma = sigma.astype(jnp.float32)[:, None, None]
  esigm1 = jnp.where(sigma < 0.5, jnp.expm1(sigma), jnp.exp(sigma) - 1.0)
  log_esigm1 = jnp.log(jnp.maximum(esigm1, 1e-12))
  if form == "conditional":
    tokens = jax.nn.log_softmax(raw[..., :vocab_size], axis=-1)
    raw = jnp.concatenate([tokens, raw[..., vocab_size:]], axis=-1) - log_esigm1
  elif form == "sedd":
    raw = raw - log_esigm1 - math.log(vocab_size)
  else:
    raise ValueError(f"absorbing log-score form must be one of {TEXT_SCORES}, got {form!r}")
  current = jax.nn.one_hot(ids_t, vocab_size + 1, dtype=bool)
  return jnp.where(current, 0.0, raw)
