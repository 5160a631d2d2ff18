"""The paper's total loss: L_rec_img + L_rec_txt + beta * L_KL + the diffusion terms, per task.

One training batch mixes tasks per example (``mdm.TASKS``); a task is only a choice of which
modality is noised, clean or absent, and where the losses apply:

  task        image latents         text tokens                        class    loss on
  class2img   noised, t ~ U         absent (all [MASK], t = 1)         label    image
  t2i         noised, t ~ U         caption clean (t = 0)              null     image
  caption     clean (t = 0)         caption noised, t ~ U              null     text
  vqa         clean (t = 0)         question clean, answer noised      null     text (answer)
  joint       noised, t ~ U         caption noised, own t ~ U          null     both
  text        absent (noise, t = 1) caption noised, t ~ U              null     text

Data without text (no ``caption`` in the batch, e.g. ImageNet's synset labels) trains
class2img alone: every task that needs text gets weight 0, the text positions are absent in every
example, and the text VAE has no reconstruction or KL term (nothing to reconstruct).

Condition dropout for classifier-free guidance: with probability ``cond_drop`` the class
becomes the null class (class2img) or the caption becomes absent (t2i).

Image diffusion: continuous VP diffusion of the (unit-variance) VAE latents, trained by
denoising score matching (eps or v target). Text diffusion: SEDD absorbing diffusion with the
denoising score entropy weighted by the noise rate (``objective="score_entropy"``), or the
paper's "Markov chain" ablation (``objective="markov"``): the text head's output is read as
x0-logits and trained on the absorbing chain's variational bound (image side unchanged: the
eps loss is DDPM's simple loss; the ablation samples images with DDPM).

By default the diffusion terms see ``stop_gradient`` latents (``grad_to_encoder=False``):
the VAE is trained only by its reconstruction and KL terms, which keeps the latent space from
collapsing toward whatever is easiest to denoise.
"""
from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp

from mdm_jax.diffusion import gaussian, markov, score_entropy
from mdm_jax.models.mdm import MDM, TASK_IDS, TASKS
from mdm_jax.models.vae import kl_to_standard_normal

T_CLASS2IMG, T_T2I, T_CAPTION, T_VQA, T_JOINT, T_TEXT = (TASK_IDS[t] for t in TASKS)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the total loss is formed.

  Attributes:
    task_weights: sampling probability (unnormalised) of each task in ``mdm.TASKS`` order;
      tasks the data cannot serve (e.g. VQA without VQA pairs) must get weight 0.
    objective: "score_entropy" (the paper) or "markov" (the ablation).
    image_target: "eps" or "v".
    beta_kl: weight of the KL term.
    cond_drop: condition dropout probability for guidance.
    grad_to_encoder: let the diffusion losses' gradients reach the VAE encoder.
    t_min: smallest diffusion time sampled (both modalities).
    image_weight, text_weight: weights of the two diffusion terms.
    schedule: "linear" or "cosine" VP schedule. noise_eps: log-linear text noise eps.
  """
  task_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
  objective: str = "score_entropy"
  image_target: str = "eps"
  beta_kl: float = 1e-4
  cond_drop: float = 0.1
  grad_to_encoder: bool = False
  t_min: float = 1e-3
  image_weight: float = 1.0
  text_weight: float = 1.0
  schedule: str = "linear"
  noise_eps: float = 1e-3

  def __post_init__(self):
    if len(self.task_weights) != len(TASKS):
      raise ValueError(f"loss.task_weights needs one weight per task {TASKS}, got "
                       f"{self.task_weights}")
    if self.objective not in ("score_entropy", "markov"):
      raise ValueError(f"loss.objective must be 'score_entropy' or 'markov', got "
                       f"{self.objective!r}")

  def vp_schedule(self) -> gaussian.VPSchedule:
    return gaussian.VPSchedule.linear() if self.schedule == "linear" else gaussian.VPSchedule.cosine()

  def text_noise(self) -> score_entropy.LogLinearNoise:
    return score_entropy.LogLinearNoise(eps=self.noise_eps)


def _masked_mean(values, weights):
  """Mean of ``values`` (b,) over examples where ``weights`` (b,) > 0 (0 when there are none)."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def mdm_loss(model: MDM, batch: dict, rng: jax.Array, cfg: LossConfig):
  """Total loss and every term, for one batch. Call through ``model.apply(..., method=mdm_loss)``.

  Args:
    model: the bound MDM module.
    batch: ``image`` (b, H, W, C) float in [-1, 1]; ``label`` (b,) int (-1: none);
      optionally ``caption`` (b, T) int (absent: data without text, see the module docstring),
      ``vqa`` (b, T) int and ``vqa_prompt_len`` (b,) int.
    rng: PRNG key.
    cfg: LossConfig.
  Returns:
    (total scalar, dict of float32 scalars: every term, plus per-task diffusion losses).
  """
  mc = model.cfg
  b = batch["image"].shape[0]
  keys = jax.random.split(rng, 10)
  sched, noise = cfg.vp_schedule(), cfg.text_noise()
  graph = score_entropy.AbsorbingGraph(mc.vocab_size)

  # Per-example task.
  weights = jnp.asarray(cfg.task_weights, jnp.float32)
  has_text = "caption" in batch
  if not has_text:
    weights = weights * (jnp.arange(len(TASKS)) == T_CLASS2IMG)
  if "vqa" not in batch:
    weights = weights.at[T_VQA].set(0.0)
  task = jax.random.categorical(keys[0], jnp.log(weights), shape=(b,)).astype(jnp.int32)
  is_task = lambda *ids: jnp.isin(task, jnp.asarray(ids))
  label = batch["label"].astype(jnp.int32)
  if "vqa" in batch:
    text0 = jnp.where((task == T_VQA)[:, None], batch["vqa"], batch["caption"])
    prompt_len = jnp.where(task == T_VQA, batch["vqa_prompt_len"], 0)
  elif has_text:
    text0, prompt_len = batch["caption"], jnp.zeros((b,), jnp.int32)
  else:  # never read: every example's text is absent (all [MASK]); pad ids keep shapes
    text0, prompt_len = jnp.zeros((b, mc.max_text_len), jnp.int32), jnp.zeros((b,), jnp.int32)
  text0 = text0.astype(jnp.int32)
  n_txt = text0.shape[1]

  # ---- Unified VAE: reconstruction and KL for both modalities.
  mu_i, ls_i = model.encode_image(batch["image"])
  z_i = mu_i + jnp.exp(ls_i) * jax.random.normal(keys[1], mu_i.shape)
  rec_img = jnp.mean((model.decode_image(z_i) - batch["image"]) ** 2)
  if has_text:
    mu_t, ls_t = model.encode_text(text0)
    z_t = mu_t + jnp.exp(ls_t) * jax.random.normal(keys[2], mu_t.shape)
    logits = model.decode_text(z_t)
    rec_txt = jnp.mean(jax.nn.logsumexp(logits, -1)
                       - jnp.take_along_axis(logits, text0[..., None], -1)[..., 0])
    kl = 0.5 * (jnp.mean(kl_to_standard_normal(mu_i, ls_i))
                + jnp.mean(kl_to_standard_normal(mu_t, ls_t)))
  else:
    z_t, rec_txt = None, jnp.zeros((), jnp.float32)
    kl = jnp.mean(kl_to_standard_normal(mu_i, ls_i))
  model.update_latent_std(z_image=z_i, z_text=z_t)
  scale = model.latent_scale()

  # ---- Times: clean (0), absent (1) or sampled, per task.
  u = lambda k: cfg.t_min + (1.0 - cfg.t_min) * jax.random.uniform(k, (b,))
  drop = jax.random.uniform(keys[3], (b,)) < cfg.cond_drop
  text_absent = is_task(T_CLASS2IMG) | ((task == T_T2I) & drop)
  t_img = jnp.where(is_task(T_CAPTION, T_VQA), 0.0, jnp.where(task == T_TEXT, 1.0, u(keys[4])))
  t_txt = jnp.where(task == T_T2I, 0.0, u(keys[5]))
  t_txt = jnp.where(text_absent, 1.0, t_txt)
  class_id = jnp.where((task == T_CLASS2IMG) & ~drop & (label >= 0), label, mc.num_classes)

  # ---- Image diffusion input.
  z0_img = z_i * scale[0]
  if not cfg.grad_to_encoder:
    z0_img = jax.lax.stop_gradient(z0_img)
  eps = jax.random.normal(keys[6], z0_img.shape)
  z_img_t = gaussian.q_sample(sched, z0_img, t_img, eps)

  # ---- Text diffusion input: absorbing transition on the positions the task generates.
  sigma, dsigma = noise(t_txt)
  generated = jnp.arange(n_txt)[None, :] >= prompt_len[:, None]       # (b, T)
  x_t = graph.sample_transition(keys[7], text0, sigma[:, None])
  x_t = jnp.where(generated, x_t, text0)
  x_t = jnp.where(text_absent[:, None], mc.mask_id, x_t)
  text_latents = None
  if cfg.grad_to_encoder:
    text_latents = model.encode_text(x_t)[0] * scale[1]

  eps_pred, text_out = model.denoise(z_img_t, t_img, x_t, t_txt, sigma, class_id, task,
                                     text_latents=text_latents)

  # ---- Diffusion losses.
  img_active = is_task(T_CLASS2IMG, T_T2I, T_JOINT)
  img_per_ex = jnp.mean(gaussian.dsm_loss(eps_pred, z0_img, eps, t_img, sched,
                                          target=cfg.image_target), axis=(1, 2))
  txt_active = is_task(T_CAPTION, T_VQA, T_JOINT, T_TEXT)
  if not has_text:
    txt_per_ex = jnp.zeros((b,), jnp.float32)
  elif cfg.objective == "score_entropy":
    per_tok = score_entropy.score_entropy_loss(text_out, sigma[:, None], dsigma[:, None], x_t,
                                               text0, graph, mask=generated)
    txt_per_ex = jnp.sum(per_tok, axis=1) / n_txt
  else:
    per_tok = markov.absorbing_elbo_loss(text_out, sigma[:, None], dsigma[:, None], x_t, text0,
                                         graph, mask=generated)
    txt_per_ex = jnp.sum(per_tok, axis=1) / n_txt
  loss_img = _masked_mean(img_per_ex, img_active)
  loss_txt = _masked_mean(txt_per_ex, txt_active)

  total = (rec_img + rec_txt + cfg.beta_kl * kl
           + cfg.image_weight * loss_img + cfg.text_weight * loss_txt)
  terms = {"loss": total, "rec_img": rec_img, "rec_txt": rec_txt, "kl": kl,
           "diff_img": loss_img, "diff_txt": loss_txt}
  per_ex = jnp.where(img_active, img_per_ex, 0.0) + jnp.where(txt_active, txt_per_ex, 0.0)
  for i, name in enumerate(TASKS):
    terms[f"task/{name}"] = _masked_mean(per_ex, task == i)
  return total, terms


def text_nll_bound(model: MDM, text0: jax.Array, rng: jax.Array, cfg: LossConfig,
                   num_draws: int = 16):
  """SEDD's bound on ``-log p(text)`` per token, the text task's (image absent) diffusion term.

  Call through ``model.apply(variables, text0, rng, cfg, method=text_nll_bound)``. Score
  entropy objective only (the Markov ablation's bound is its own loss).

  Args:
    text0: (b, T) int token ids (text, eos, pad: the whole fixed-length sequence is scored).
    num_draws: Monte-Carlo draws of (t, x_t) per sequence.
  Returns:
    (num_draws, b, T) float32 ``dsigma(t) * score_entropy`` (``evaluation.perplexity.
    sedd_nll_bound`` turns it into nats per sequence).
  """
  if cfg.objective != "score_entropy":
    raise ValueError(f"text_nll_bound needs objective='score_entropy', not {cfg.objective!r}")
  mc = model.cfg
  b, n_txt = text0.shape
  noise, graph = cfg.text_noise(), score_entropy.AbsorbingGraph(mc.vocab_size)
  scale = model.latent_scale()
  task = jnp.full((b,), T_TEXT, jnp.int32)
  null = jnp.full((b,), mc.num_classes, jnp.int32)
  ones = jnp.ones((b,), jnp.float32)

  def draw(key):
    k_t, k_x, k_z = jax.random.split(key, 3)
    t = cfg.t_min + (1.0 - cfg.t_min) * jax.random.uniform(k_t, (b,))
    sigma, dsigma = noise(t)
    x_t = graph.sample_transition(k_x, text0, sigma[:, None])
    z = jax.random.normal(k_z, (b, mc.n_image_tokens, mc.latent_dim))   # the absent image
    text_latents = model.encode_text(x_t)[0] * scale[1] if cfg.grad_to_encoder else None
    _, log_score = model.denoise(z, ones, x_t, t, sigma, null, task, text_latents=text_latents)
    return score_entropy.score_entropy_loss(log_score, sigma[:, None], dsigma[:, None], x_t,
                                            text0, graph)

  return jnp.stack([draw(k) for k in jax.random.split(rng, num_draws)])
