"""Generation for every task: composes the network-agnostic samplers with the MDM model.

One path serves all tasks: ``diffusion.samplers.joint_sample`` advances image latents and text
tokens on one time grid, and the task only decides what is noised, clean or absent (the same
table as ``mdm_jax.losses``):

  class2img  image generated, text absent (all [MASK] at t = 1), class given
  t2i        image generated, caption held clean
  caption    image held clean, caption generated
  vqa        image and question held clean, answer generated
  joint      image and caption generated together
  text       caption generated, image absent (Gaussian noise at t = 1)
  inpaint    image generated where ``image_mask`` is False, known elsewhere; text absent

Text infilling: ``text`` with ``text_mask`` (True where a token is given) for the text, caption
or joint task generates only the masked positions.

Joint generation follows ``SampleConfig.joint_order``:

  together    image and caption on one time grid, the joint task (both noised, one call a step)
  text_first  the caption first (the text task, image absent), then the image from it (t2i):
              p(text) p(image | text), each factor a task the network is trained on, with
              caption guidance in the second stage (default)
  image_first the image first (class2img with the null class), then its caption (caption)

The two modalities need not move together: a digit's identity is fixed early in the image's
reverse diffusion, while the caption's digit word can be revealed at any step, so on one grid
the two often settle on different digits (README, "Text-to-image and joint generation").

Classifier-free guidance (``guidance > 0``) guides the image noise prediction for class2img and
t2i with ``(1 + w) eps(cond) - w eps(uncond)``, the unconditional call using the null class or an
absent caption.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from mdm_jax.diffusion import samplers, score_entropy
from mdm_jax.losses import LossConfig
from mdm_jax.models.mdm import MDM, TASK_IDS, TASKS

GEN_TASKS = TASKS + ("inpaint",)
JOINT_ORDERS = ("text_first", "image_first", "together")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Sampler settings. ``image_solver``/``text_method`` "auto" follow the loss objective:
  DPM-Solver++(2M) + SEDD analytic for score entropy, DDPM + D3PM ancestral for the Markov
  ablation. ``text_temperature`` reshapes which token a [MASK] becomes (1: the model's
  distribution; 0: its most likely token, greedy decoding)."""
  steps: int = 20
  guidance: float = 0.0
  image_solver: str = "auto"
  text_method: str = "auto"
  t_end: float = 1e-3
  text_temperature: float = 1.0
  joint_order: str = "text_first"

  def __post_init__(self):
    if self.joint_order not in JOINT_ORDERS:
      raise ValueError(f"sample.joint_order must be one of {JOINT_ORDERS}, got "
                       f"{self.joint_order!r}")


def _solvers(loss_cfg: LossConfig, sample_cfg: SampleConfig) -> tuple[str, str]:
  markov = loss_cfg.objective == "markov"
  image = sample_cfg.image_solver
  text = sample_cfg.text_method
  if image == "auto":
    image = "ddpm" if markov else "dpm++2m"
  if text == "auto":
    text = "markov" if markov else "analytic"
  return image, text


def generate(model: MDM, variables, task: str, rng: jax.Array, *, num: int,
             loss_cfg: LossConfig, sample_cfg: SampleConfig = SampleConfig(),
             labels: Optional[jax.Array] = None, text: Optional[jax.Array] = None,
             prompt_len: Optional[jax.Array] = None, images: Optional[jax.Array] = None,
             image_mask: Optional[jax.Array] = None, text_mask: Optional[jax.Array] = None):
  """Sample ``num`` examples of ``task``. Jit-compatible (``task`` and configs static).

  Args:
    model, variables: the MDM module and its variables (params + latent_stats).
    task: one of ``GEN_TASKS``.
    rng: PRNG key.
    num: batch size.
    labels: (num,) class ids for class2img/inpaint (None: null class).
    text: (num, T) ids: the caption for t2i; question <sep> answer (answer ignored) for vqa.
    prompt_len: (num,) tokens of ``text`` that are given (vqa).
    images: (num, H, W, C) in [-1, 1]: the given image (caption, vqa, inpaint).
    image_mask: (num, H, W, C) or (num, H, W, 1) bool, True where the image is known (inpaint).
    text_mask: (num, T) bool, True where ``text`` is given (infilling, for text/caption/joint).
  Returns:
    images (num, H, W, C) float32 in [-1, 1], tokens (num, T) int32. For tasks where a
    modality is given, it is returned as given; where absent, the returned value is meaningless.
  """
  if task not in GEN_TASKS:
    raise ValueError(f"unknown task {task!r}; choose one of {GEN_TASKS}")
  need = {"t2i": ("text",), "caption": ("images",), "vqa": ("images", "text", "prompt_len"),
          "inpaint": ("images", "image_mask")}.get(task, ())
  given = dict(text=text, images=images, prompt_len=prompt_len, image_mask=image_mask)
  infill_mask = text_mask
  if infill_mask is not None:
    if task not in ("text", "caption", "joint"):
      raise ValueError(f"text_mask (infilling) is for the text, caption or joint task, not {task!r}")
    need = need + ("text",)
  missing = [k for k in need if given[k] is None]
  if missing:
    raise ValueError(f"task {task!r} needs {missing}")
  if task == "joint" and sample_cfg.joint_order != "together":
    return _joint_in_two_stages(model, variables, rng, num=num, loss_cfg=loss_cfg,
                                sample_cfg=sample_cfg, text=text, text_mask=text_mask)
  cfg = model.cfg
  image_solver, text_method = _solvers(loss_cfg, sample_cfg)
  sched, noise = loss_cfg.vp_schedule(), loss_cfg.text_noise()
  graph = score_entropy.AbsorbingGraph(cfg.vocab_size)
  bound = model.bind(variables)
  scale = bound.latent_scale()
  k_z, k_sample = jax.random.split(rng)

  n_img, n_txt = cfg.n_image_tokens, cfg.max_text_len
  z_T = jax.random.normal(k_z, (num, n_img, cfg.latent_dim))
  tokens_T = graph.sample_limit(None, (num, n_txt))
  image_clean = text_clean = False
  image_absent = text_absent = False
  text_mask = text_known = image_known = latent_mask = None
  if images is not None:
    mu, _ = bound.encode_image(images)
    clean_latents = mu * scale[0]
  if task in ("class2img", "inpaint"):
    text_clean = text_absent = True
  if task == "t2i":
    tokens_T, text_clean = text.astype(jnp.int32), True
  if task in ("caption", "vqa"):
    z_T, image_clean = clean_latents, True
  if task == "vqa":
    text_mask = jnp.arange(n_txt)[None] < prompt_len[:, None]
    text_known = text.astype(jnp.int32)
  if task == "text":
    image_clean = image_absent = True
  if infill_mask is not None:
    text_mask, text_known = jnp.asarray(infill_mask, bool), text.astype(jnp.int32)
  if task == "inpaint":
    # A latent token is known when its whole patch is known.
    p = cfg.patch_size
    m = jnp.all(image_mask.reshape(num, cfg.grid[0], p, cfg.grid[1], p, -1), axis=(2, 4, 5))
    latent_mask = jnp.broadcast_to(m.reshape(num, n_img, 1), z_T.shape)
    image_known = clean_latents

  task_id = jnp.full((num,), TASK_IDS["class2img" if task == "inpaint" else task], jnp.int32)
  null = jnp.full((num,), cfg.num_classes, jnp.int32)
  class_id = null if labels is None or task not in ("class2img", "inpaint") else labels
  ones = jnp.ones((num,), jnp.float32)
  all_mask = jnp.full((num, n_txt), cfg.mask_id, jnp.int32)

  def call(z, t_img, x, t_txt, class_id):
    if image_absent:
      z, t_img = z_T, ones
    if text_absent:
      x, t_txt = all_mask, ones
    sigma, _ = noise(t_txt)
    return bound.denoise(z, t_img, x, t_txt, sigma, class_id, task_id)

  def model_fn(z, t_img, x, t_txt):
    eps, log_score = call(z, t_img, x, t_txt, class_id)
    if sample_cfg.guidance > 0 and task in ("class2img", "t2i", "inpaint"):
      if task == "t2i":
        eps_u, _ = bound.denoise(z, t_img, all_mask, ones, noise(ones)[0], null, task_id)
      else:
        eps_u, _ = call(z, t_img, x, t_txt, null)
      eps = samplers.cfg(eps, eps_u, sample_cfg.guidance)
    return eps, log_score

  z0, tokens = samplers.joint_sample(
      model_fn, z_T, tokens_T, sched, graph, noise, k_sample, steps=sample_cfg.steps,
      image_solver=image_solver, text_method=text_method, image_clean=image_clean,
      text_clean=text_clean, image_mask=latent_mask, image_known=image_known,
      text_mask=text_mask, text_known=text_known, t_end=sample_cfg.t_end,
      text_temperature=float(sample_cfg.text_temperature))
  out_images = jnp.clip(bound.decode_image(z0 / scale[0]), -1.0, 1.0)
  if images is not None and task in ("caption", "vqa"):
    out_images = images
  return out_images, tokens


def _joint_in_two_stages(model, variables, rng, *, num, loss_cfg, sample_cfg, text, text_mask):
  """Joint samples as one modality, then the other given it (``joint_order``, module doc)."""
  k_first, k_second = jax.random.split(rng)
  kw = dict(num=num, loss_cfg=loss_cfg, sample_cfg=sample_cfg)
  if sample_cfg.joint_order == "text_first":
    _, tokens = generate(model, variables, "text", k_first, text=text, text_mask=text_mask, **kw)
    images, _ = generate(model, variables, "t2i", k_second, text=tokens, **kw)
  else:
    images, _ = generate(model, variables, "class2img", k_first, **kw)
    _, tokens = generate(model, variables, "caption", k_second, images=images, text=text,
                         text_mask=text_mask, **kw)
  return images, tokens
