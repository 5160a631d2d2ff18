"""The paper's total loss: L_rec_img + L_rec_txt + beta * L_KL + the diffusion terms, per task.

One training batch mixes tasks per example (``tasks.TASKS``); a task is only a choice of which
modality is noised, clean or absent and where the losses apply, read from the task table in
``mdm_jax.tasks`` (the diffusion loss goes on the noised modalities: the answer only for VQA).

Data without text (no ``caption`` in the batch, e.g. ImageNet's synset labels) trains
class2img alone (``tasks.servable``): every task that needs text gets weight 0, the text
positions are absent in every example, and the text VAE has no reconstruction or KL term
(nothing to reconstruct).

Condition dropout for classifier-free guidance: with probability ``cond_drop`` a task's
``dropped`` condition goes: the class becomes the null class (class2img) or the caption becomes
absent (t2i).

Image diffusion: continuous VP diffusion of the (unit-variance) VAE latents, trained by
denoising score matching (eps or v target). Text diffusion: SEDD absorbing diffusion with the
denoising score entropy weighted by the noise rate (``objective="score_entropy"``), or the
paper's "Markov chain" ablation (``objective="markov"``): the text head's output is read as
x0-logits and trained on the absorbing chain's variational bound (image side unchanged: the
eps loss is DDPM's simple loss; the ablation samples images with DDPM). A VQA answer's first
token is always masked, its term weighted by the probability of that (``mask_answers``).

By default the diffusion terms see ``stop_gradient`` latents (``grad_to_encoder=False``):
the VAE is trained only by its reconstruction and KL terms, which keeps the latent space from
collapsing toward whatever is easiest to denoise.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax import tasks as tasks_lib
from mdm_jax.diffusion import gaussian, markov, score_entropy
from mdm_jax.diffusion.processes import Processes
from mdm_jax.models.mdm import MDM
from mdm_jax.models.vae import kl_to_standard_normal

TASKS, TASK_IDS = tasks_lib.TASKS, tasks_lib.TASK_IDS


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the total loss is formed.

  Attributes:
    task_weights: sampling probability (unnormalised) of each task in ``tasks.TASKS`` order;
      tasks the data cannot serve (e.g. VQA without VQA pairs) must get weight 0.
    objective: "score_entropy" (the paper) or "markov" (the ablation).
    image_target: "eps" or "v".
    beta_kl: weight of the KL term.
    cond_drop: condition dropout probability for guidance.
    grad_to_encoder: let the diffusion losses' gradients reach the VAE encoder.
    t_min: smallest diffusion time sampled (both modalities).
    image_weight, text_weight: weights of the two diffusion terms.
    mask_answer: VQA's first answer token is always [MASK], its loss weighted by the probability
      that the forward process masks it (``mask_answers``).
    schedule: "linear" or "cosine" VP schedule. noise_eps: log-linear text noise eps (both
      read through ``diffusion.processes.Processes.build``).
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
  mask_answer: bool = True
  schedule: str = "linear"
  noise_eps: float = 1e-3

  def __post_init__(self):
    if len(self.task_weights) != len(TASKS):
      raise ValueError(f"loss.task_weights needs one weight per task {TASKS}, got "
                       f"{self.task_weights}")
    if self.objective not in ("score_entropy", "markov"):
      raise ValueError(f"loss.objective must be 'score_entropy' or 'markov', got "
                       f"{self.objective!r}")


def _masked_mean(values, weights):
  """Mean of ``values`` (b,) over examples where ``weights`` (b,) > 0 (0 when there are none)."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def per_task(task: jax.Array, prop) -> jax.Array:
  """``prop(spec)`` of each example's task: (b,) bool, looked up from the task table."""
  return jnp.asarray([bool(prop(tasks_lib.SPECS[n])) for n in TASKS])[task]


def assign_tasks(key, task_weights, batch: dict) -> jax.Array:
  """(b,) int32 task per example, drawn by ``task_weights`` among the tasks the batch serves."""
  served = tasks_lib.servable(batch)
  weights = jnp.asarray(task_weights, jnp.float32) * jnp.asarray([n in served for n in TASKS])
  b = batch["image"].shape[0]
  return jax.random.categorical(key, jnp.log(weights), shape=(b,)).astype(jnp.int32)


def training_text(batch: dict, task: jax.Array, max_text_len: int):
  """Each example's text and its clean prompt length: the VQA data for the prompted task (its
  question is the prompt), the caption otherwise; pad ids when the data has no text (never
  read: the text is then absent everywhere). -> ((b, T) int32, (b,) int32)."""
  b = task.shape[0]
  zeros = jnp.zeros((b,), jnp.int32)
  if "caption" not in batch:
    return jnp.zeros((b, max_text_len), jnp.int32), zeros
  if "vqa" not in batch:
    return batch["caption"].astype(jnp.int32), zeros
  prompted = per_task(task, lambda s: s.text == tasks_lib.PROMPT)
  text0 = jnp.where(prompted[:, None], batch["vqa"], batch["caption"])
  return text0.astype(jnp.int32), jnp.where(prompted, batch["vqa_prompt_len"], 0)


def vae_terms(model: MDM, image, text0: Optional[jax.Array], k_img, k_txt):
  """The unified VAE's reconstruction and KL terms (no text terms when ``text0`` is None) and
  the sampled latents; ``image`` is the visual modality (images, or clips for a clip model:
  ``MDM.encode_visual``). -> (z_image, z_text or None, rec_img, rec_txt, kl)."""
  mu_i, ls_i = model.encode_visual(image)
  z_i = mu_i + jnp.exp(ls_i) * jax.random.normal(k_img, mu_i.shape)
  rec_img = jnp.mean((model.decode_visual(z_i) - image) ** 2)
  if text0 is None:
    return z_i, None, rec_img, jnp.zeros((), jnp.float32), jnp.mean(
        kl_to_standard_normal(mu_i, ls_i))
  mu_t, ls_t = model.encode_text(text0)
  z_t = mu_t + jnp.exp(ls_t) * jax.random.normal(k_txt, mu_t.shape)
  logits = model.decode_text(z_t)
  rec_txt = jnp.mean(jax.nn.logsumexp(logits, -1)
                     - jnp.take_along_axis(logits, text0[..., None], -1)[..., 0])
  kl = 0.5 * (jnp.mean(kl_to_standard_normal(mu_i, ls_i))
              + jnp.mean(kl_to_standard_normal(mu_t, ls_t)))
  return z_i, z_t, rec_img, rec_txt, kl


def task_times(cfg: LossConfig, task, label, num_classes: int, keys):
  """Per-example diffusion times and conditions from the task table and condition dropout.

  A clean modality gets t = 0, an absent one t = 1, a noised one t ~ U[t_min, 1].
  Args:
    keys: 3 keys (dropout, image time, text time).
  Returns:
    t_img (b,), t_txt (b,), text_absent (b,) bool, class_id (b,) int32 (null: num_classes).
  """
  b = task.shape[0]
  u = lambda k: cfg.t_min + (1.0 - cfg.t_min) * jax.random.uniform(k, (b,))
  drop = jax.random.uniform(keys[0], (b,)) < cfg.cond_drop
  role = lambda modality, r: per_task(task, lambda s: getattr(s, modality) == r)
  drops = lambda what: per_task(task, lambda s: s.dropped == what) & drop
  text_absent = role("text", tasks_lib.ABSENT) | drops("caption")
  t_img = jnp.where(role("image", tasks_lib.CLEAN), 0.0,
                    jnp.where(role("image", tasks_lib.ABSENT), 1.0, u(keys[1])))
  t_txt = jnp.where(role("text", tasks_lib.CLEAN), 0.0, u(keys[2]))
  t_txt = jnp.where(text_absent, 1.0, t_txt)
  keep_class = per_task(task, lambda s: s.uses_class) & ~drops("class")
  class_id = jnp.where(keep_class & (label >= 0), label, num_classes)
  return t_img, t_txt, text_absent, class_id


def corrupt_text(procs: Processes, key, text0, sigma, prompt_len, text_absent, mask_id: int):
  """The absorbing transition on the positions a task generates (after the prompt); all [MASK]
  where the text is absent. -> (x_t (b, T) int32, generated (b, T) bool)."""
  generated = jnp.arange(text0.shape[1])[None, :] >= prompt_len[:, None]
  x_t = procs.graph.sample_transition(key, text0, sigma[:, None])
  x_t = jnp.where(generated, x_t, text0)
  x_t = jnp.where(text_absent[:, None], mask_id, x_t)
  return x_t, generated


def mask_answers(procs: Processes, task, x_t, prompt_len, sigma):
  """Integrate the answer's mask indicator out of the prompted task's text loss.

  A VQA answer is one word, the one token of the example that the image decides. Drawn like
  every other position, it is masked with probability 1 - e^-sigma (about t) and its loss then
  weighted by about 1/t: in a batch a few answers carry large weights and most none, a noisy
  signal for the token the question is about (on the digits run, the yes/no questions were then
  learnt on some seeds only: docs/findings.md). Masking it always and weighting its loss by that
  probability gives the same expected loss for that token (its other inputs, the image, the
  question and the other positions' masks, are drawn independently of its own mask) with every
  answer of every batch counting. Only the first answer token: forcing more would change the
  contexts the later ones are trained in. The other generated positions (the end of text,
  padding, a longer answer's rest) keep their own masks and weight 1; they are always trained
  with the first answer token masked.

  Args:
    task: (b,) task ids; x_t: (b, T) noised ids; prompt_len: (b,) clean prompt lengths (the first
      answer token sits at ``prompt_len``); sigma: (b,) total text noise.
  Returns:
    (x_t with every prompted example's first answer token [MASK], (b, T) float32 loss weights).
  """
  prompted = per_task(task, lambda s: s.text == tasks_lib.PROMPT)
  first = prompted[:, None] & (jnp.arange(x_t.shape[1])[None, :] == prompt_len[:, None])
  weight = jnp.where(first, procs.graph.mask_chance(sigma)[:, None], 1.0)
  return jnp.where(first, procs.graph.mask_id, x_t), weight


def _text_loss_fn(procs: Processes):
  """The per-token text loss of the objective: score entropy, or the absorbing chain's ELBO for
  the Markov ablation (the same signature; both are bounds on -log p integrated over t)."""
  return markov.absorbing_elbo_loss if procs.markov else score_entropy.score_entropy_loss


def text_diffusion_loss(procs: Processes, text_out, sigma, dsigma, x_t, text0, generated,
                        weight=None):
  """(b,) per-example text diffusion loss over the generated positions, mean over all T:
  score entropy, or the absorbing chain's bound for the Markov ablation; ``weight`` (b, T)
  scales each position's term (``mask_answers``)."""
  per_tok = _text_loss_fn(procs)(text_out, sigma[:, None], dsigma[:, None], x_t, text0,
                                 procs.graph, mask=generated)
  if weight is not None:
    per_tok = per_tok * weight
  return jnp.sum(per_tok, axis=1) / text0.shape[1]


def mdm_loss(model: MDM, batch: dict, rng: jax.Array, cfg: LossConfig,
             procs: Optional[Processes] = None):
  """Total loss and every term, for one batch. Call through ``model.apply(..., method=mdm_loss)``.

  Args:
    model: the bound MDM module.
    batch: ``image`` (b, H, W, C) float in [-1, 1] (a clip model's: clips (b, T, H, W, C),
      read as images are: a clip is the visual modality with a time axis, so every task
      trains on clips unchanged); ``label`` (b,) int (-1: none);
      optionally ``caption`` (b, T) int (absent: data without text, see the module docstring),
      ``vqa`` (b, T) int and ``vqa_prompt_len`` (b,) int.
    rng: PRNG key.
    cfg: LossConfig.
    procs: the diffusion processes (default: built from ``model.cfg`` and ``cfg``).
  Returns:
    (total scalar, dict of float32 scalars: every term, plus per-task diffusion losses).
  """
  mc = model.cfg
  if procs is None:
    procs = Processes.build(mc, cfg)
  keys = jax.random.split(rng, 10)
  has_text = "caption" in batch
  task = assign_tasks(keys[0], cfg.task_weights, batch)
  text0, prompt_len = training_text(batch, task, mc.max_text_len)

  z_i, z_t, rec_img, rec_txt, kl = vae_terms(model, batch["image"], text0 if has_text else None,
                                             keys[1], keys[2])
  model.update_latent_std(z_image=z_i, z_text=z_t)
  scale = model.latent_scale()
  t_img, t_txt, text_absent, class_id = task_times(
      cfg, task, batch["label"].astype(jnp.int32), mc.num_classes, keys[3:6])

  z0_img = z_i * scale[0]
  if not cfg.grad_to_encoder:
    z0_img = jax.lax.stop_gradient(z0_img)
  eps = jax.random.normal(keys[6], z0_img.shape)
  z_img_t = gaussian.q_sample(procs.image, z0_img, t_img, eps)
  sigma, dsigma = procs.text_noise(t_txt)
  x_t, generated = corrupt_text(procs, keys[7], text0, sigma, prompt_len, text_absent,
                                mc.mask_id)
  tok_weight = None
  if cfg.mask_answer:
    x_t, tok_weight = mask_answers(procs, task, x_t, prompt_len, sigma)
  text_latents = model.encode_text(x_t)[0] * scale[1] if cfg.grad_to_encoder else None

  image_out, text_out = model.denoise(z_img_t, t_img, x_t, t_txt, sigma, class_id, task,
                                      text_latents=text_latents)

  img_per_ex = jnp.mean(gaussian.dsm_loss(image_out, z0_img, eps, t_img, procs.image,
                                          target=procs.image_target), axis=(1, 2))
  txt_per_ex = (text_diffusion_loss(procs, text_out, sigma, dsigma, x_t, text0, generated,
                                    tok_weight) if has_text else jnp.zeros_like(img_per_ex))
  return _total(cfg, task, rec_img, rec_txt, kl, img_per_ex, txt_per_ex)


def _total(cfg: LossConfig, task, rec_img, rec_txt, kl, img_per_ex, txt_per_ex):
  """The weighted total and the logged terms; each diffusion term is averaged over the examples
  whose task noises that modality (``tasks.Task.image_loss`` / ``text_loss``)."""
  img_active = per_task(task, lambda s: s.image_loss)
  txt_active = per_task(task, lambda s: s.text_loss)
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
                   num_draws: int = 16, procs: Optional[Processes] = None):
  """A bound on ``-log p(text)`` per token, the text task's (image absent) diffusion term.

  Call through ``model.apply(variables, text0, rng, cfg, method=text_nll_bound)``. The score
  entropy objective gives SEDD's bound; the Markov ablation's (the text head read as x0 logits)
  gives the continuous-time absorbing-chain ELBO, its own training loss. Both are integrands
  over t of the same form, so ``evaluation.perplexity.sedd_nll_bound`` integrates either.

  Args:
    text0: (b, T) int token ids (text, eos, pad: the whole fixed-length sequence is scored).
    num_draws: Monte-Carlo draws of (t, x_t) per sequence.
    procs: the diffusion processes (default: built from ``model.cfg`` and ``cfg``).
  Returns:
    (num_draws, b, T) float32 ``dsigma(t) * score_entropy`` (or the absorbing ELBO's
    ``dsigma / (e^sigma - 1) * CE``; ``evaluation.perplexity.sedd_nll_bound`` turns it into nats
    per sequence).
  """
  mc = model.cfg
  b, n_txt = text0.shape
  if procs is None:
    procs = Processes.build(mc, cfg)
  noise, graph = procs.text_noise, procs.graph
  bound = _text_loss_fn(procs)
  scale = model.latent_scale()
  task = jnp.full((b,), TASK_IDS["text"], jnp.int32)
  null = jnp.full((b,), mc.num_classes, jnp.int32)
  ones = jnp.ones((b,), jnp.float32)

  def draw(mdl: MDM, carry, key):
    k_t, k_x, k_z = jax.random.split(key, 3)
    t = cfg.t_min + (1.0 - cfg.t_min) * jax.random.uniform(k_t, (b,))
    sigma, dsigma = noise(t)
    x_t = graph.sample_transition(k_x, text0, sigma[:, None])
    z = jax.random.normal(k_z, (b, mc.n_image_tokens, mc.latent_dim))   # the absent image
    text_latents = mdl.encode_text(x_t)[0] * scale[1] if cfg.grad_to_encoder else None
    _, log_score = mdl.denoise(z, ones, x_t, t, sigma, null, task, text_latents=text_latents)
    return carry, bound(log_score, sigma[:, None], dsigma[:, None], x_t, text0, graph)

  # Flax's lifted scan over the draws (every collection read-only): the program holds one copy
  # of the network whatever num_draws is, where a Python loop would inline one per draw.
  scan = nn.scan(draw, variable_broadcast=True, length=num_draws)
  return scan(model, None, jax.random.split(rng, num_draws))[1]
