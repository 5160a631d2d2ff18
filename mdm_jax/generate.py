"""Generation for every task: composes the network-agnostic samplers with the MDM model.

One path serves all tasks: ``diffusion.samplers.joint_sample`` advances image latents and text
tokens on one time grid, and the task only decides what is noised, clean, absent or given:
the task table in ``mdm_jax.tasks`` (also read by the loss), including what each task needs
and which task id the network sees (``inpaint`` uses class2img's).

Text infilling: ``text`` with ``text_mask`` (True where a token is given) for a task whose text
is noised (text, caption, joint) generates only the masked positions.

Joint generation follows ``SampleConfig.joint_order``:

  together    image and caption on one time grid, the joint task (both noised, one call a step)
  text_first  the caption first (the text task, image absent), then the image from it (t2i):
              p(text) p(image | text), each factor a task the network is trained on, with
              caption guidance in the second stage
  image_first the image first (class2img with the null class), then its caption (caption)
  gibbs       one Gibbs sweep from the text marginal: a caption c0 ~ p(text) (the text task),
              the image x ~ p(image | c0) (t2i, caption guidance), then the pair's caption
              c ~ p(text | x) (caption). x is drawn from its marginal through c0 and c from its
              conditional, so (x, c) is a joint sample when the three conditionals are exact;
              c0 is discarded. The last word is the captioner's, which reads an image more
              reliably than t2i draws from a caption; it costs one text pass more than
              text_first (default)

The two modalities need not move together: a digit's identity is fixed early in the image's
reverse diffusion, while the caption's digit word can be revealed at any step, so on one grid
the two often settle on different content (docs/findings.md, "Joint samples by one Gibbs sweep").

Classifier-free guidance guides the image noise prediction of the tasks with a ``dropped``
condition with ``(1 + w) eps(cond) - w eps(uncond)``, the unconditional call using the null
class (class2img, inpaint: ``w = guidance``) or an absent caption (t2i: ``w =
caption_guidance``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from mdm_jax import tasks as tasks_lib
from mdm_jax.diffusion import samplers
from mdm_jax.diffusion.processes import Processes
from mdm_jax.models.mdm import MDM

TASKS, TASK_IDS, GEN_TASKS = tasks_lib.TASKS, tasks_lib.TASK_IDS, tasks_lib.GEN_TASKS
JOINT_ORDERS = ("text_first", "image_first", "gibbs", "together")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Sampler settings. ``image_solver``/``text_method`` "auto" follow the loss objective:
  DPM-Solver++(2M) + SEDD analytic for score entropy, DDPM + D3PM ancestral for the Markov
  ablation. ``text_temperature`` reshapes which token a [MASK] becomes (1: the model's
  distribution; 0: its most likely token, greedy decoding). ``guidance`` is the
  classifier-free guidance weight on the class (class2img, inpaint), ``caption_guidance`` the
  one on the caption (t2i, and the image stage of text_first and gibbs joint samples): the two
  conditions are learnt to different strengths, so their best weights differ."""
  steps: int = 20
  guidance: float = 0.0
  caption_guidance: float = 0.0
  image_solver: str = "auto"
  text_method: str = "auto"
  t_end: float = 1e-3
  text_temperature: float = 1.0
  joint_order: str = "gibbs"

  def __post_init__(self):
    if self.joint_order not in JOINT_ORDERS:
      raise ValueError(f"sample.joint_order must be one of {JOINT_ORDERS}, got "
                       f"{self.joint_order!r}")


def _solvers(procs: Processes, sample_cfg: SampleConfig) -> tuple[str, str]:
  image = sample_cfg.image_solver
  text = sample_cfg.text_method
  if image == "auto":
    image = "ddpm" if procs.markov else "dpm++2m"
  if text == "auto":
    text = "markov" if procs.markov else "analytic"
  return image, text


def check_inputs(task: str, given: dict, text_mask=None) -> tasks_lib.Task:
  """The spec of ``task``, after checking that ``given`` (name -> array or None) holds every
  input the task table says it needs, and that a ``text_mask`` comes with a noised text."""
  if task not in GEN_TASKS:
    raise ValueError(f"unknown task {task!r}; choose one of {GEN_TASKS}")
  spec = tasks_lib.SPECS[task]
  need = spec.needs
  if text_mask is not None:
    if not spec.infills:
      infill = tuple(n for n, s in tasks_lib.SPECS.items() if s.infills)
      raise ValueError(f"text_mask (infilling) is for the tasks {infill}, not {task!r}")
    need = need + ("text",)
  missing = [k for k in need if given.get(k) is None]
  if missing:
    raise ValueError(f"task {task!r} needs {missing}")
  return spec


def generate(model: MDM, variables, task: str, rng: jax.Array, *, num: int,
             procs: Processes, sample_cfg: SampleConfig = SampleConfig(),
             labels: Optional[jax.Array] = None, text: Optional[jax.Array] = None,
             prompt_len: Optional[jax.Array] = None, images: Optional[jax.Array] = None,
             image_mask: Optional[jax.Array] = None, text_mask: Optional[jax.Array] = None):
  """Sample ``num`` examples of ``task``. Jit-compatible (``task`` and configs static).

  Args:
    model, variables: the MDM module and its variables (params + latent_stats).
    task: one of ``GEN_TASKS``.
    rng: PRNG key.
    num: batch size.
    procs: the diffusion processes the model was trained with (``Processes.build``).
    labels: (num,) class ids for the tasks that use the class (None: null class).
    text: (num, T) ids: the caption for t2i; question <sep> answer (answer ignored) for vqa.
    prompt_len: (num,) tokens of ``text`` that are given (vqa).
    images: (num, H, W, C) in [-1, 1]: the given image (caption, vqa, inpaint); a clip model's
      are clips (num, T, H, W, C) (``MDM.encode_visual``), as are its outputs.
    image_mask: (num, H, W, C) or (num, H, W, 1) bool, True where the image is known (inpaint);
      a clip model's (num, T, H, W, C or 1): e.g. the first k frames (video prediction).
    text_mask: (num, T) bool, True where ``text`` is given (infilling, for text/caption/joint).
  Returns:
    images (num, H, W, C) float32 in [-1, 1], tokens (num, T) int32. For tasks where a
    modality is given, it is returned as given; where absent, the returned value is meaningless.
  """
  spec = check_inputs(task, dict(text=text, images=images, prompt_len=prompt_len,
                                 image_mask=image_mask), text_mask)
  if spec.name == "joint" and sample_cfg.joint_order != "together":
    return _joint_in_stages(model, variables, rng, num=num, procs=procs,
                                sample_cfg=sample_cfg, text=text, text_mask=text_mask)
  image_solver, text_method = _solvers(procs, sample_cfg)
  bound = model.bind(variables)
  k_z, k_sample = jax.random.split(rng)
  start = _start(bound, spec, procs, k_z, num, text=text, prompt_len=prompt_len, images=images,
                 image_mask=image_mask, text_mask=text_mask)
  class_id = labels if spec.uses_class and labels is not None else None
  guidance = {"class": sample_cfg.guidance, "caption": sample_cfg.caption_guidance}.get(
      spec.dropped, 0.0)
  model_fn = _model_fn(model, variables, spec, procs, start, class_id, guidance)
  z0, tokens = samplers.joint_sample(
      model_fn, start["z_T"], start["tokens_T"], procs.image, procs.graph, procs.text_noise,
      k_sample, steps=sample_cfg.steps, image_solver=image_solver, text_method=text_method,
      image_clean=start["image_clean"], text_clean=start["text_clean"],
      image_mask=start["latent_mask"], image_known=start["image_known"],
      text_mask=start["text_mask"], text_known=start["text_known"], t_end=sample_cfg.t_end,
      text_temperature=float(sample_cfg.text_temperature))
  if images is not None and spec.image == tasks_lib.CLEAN:
    return images, tokens
  return jnp.clip(bound.decode_visual(z0 / bound.latent_scale()[0]), -1.0, 1.0), tokens


def _start(bound, spec: tasks_lib.Task, procs: Processes, key, num, *, text, prompt_len,
           images, image_mask, text_mask) -> dict:
  """The sampler's starting state and what it holds, from the task's roles: z_T (num, N, D),
  tokens_T (num, T), the held-clean / absent flags and the known parts (None where unused)."""
  cfg = bound.cfg
  n_img, n_txt = cfg.n_image_tokens, cfg.max_text_len
  s = dict(z_T=jax.random.normal(key, (num, n_img, cfg.latent_dim)),
           tokens_T=procs.graph.sample_limit(None, (num, n_txt)),
           image_clean=spec.image in (tasks_lib.CLEAN, tasks_lib.ABSENT),
           image_absent=spec.image == tasks_lib.ABSENT,
           text_clean=spec.text in (tasks_lib.CLEAN, tasks_lib.ABSENT),
           text_absent=spec.text == tasks_lib.ABSENT,
           text_mask=None, text_known=None, latent_mask=None, image_known=None)
  if images is not None:
    clean_latents = bound.encode_visual(images)[0] * bound.latent_scale()[0]
  if spec.text == tasks_lib.CLEAN:
    s["tokens_T"] = text.astype(jnp.int32)
  if spec.image == tasks_lib.CLEAN:
    s["z_T"] = clean_latents
  if spec.text == tasks_lib.PROMPT:
    s["text_mask"] = jnp.arange(n_txt)[None] < prompt_len[:, None]
    s["text_known"] = text.astype(jnp.int32)
  if text_mask is not None:
    s["text_mask"], s["text_known"] = jnp.asarray(text_mask, bool), text.astype(jnp.int32)
  if spec.image == tasks_lib.KNOWN:
    # A latent token is known when its whole patch (tubelet) is known; an image is one frame.
    p = cfg.patch_size
    m = jnp.all(image_mask.reshape(num, cfg.token_frames, cfg.tubelet, cfg.grid[0], p,
                                   cfg.grid[1], p, -1), axis=(2, 4, 6, 7))
    s["latent_mask"] = jnp.broadcast_to(m.reshape(num, n_img, 1), s["z_T"].shape)
    s["image_known"] = clean_latents
  return s


def denoise_network(model: MDM, variables, *args):
  """``MDM.denoise`` as a function of (model, variables, inputs): each network call of a
  sampler's program is a call of this function, jitted (``_model_fn``)."""
  return model.apply(variables, *args, method=MDM.denoise)


def _model_fn(model: MDM, variables, spec: tasks_lib.Task, procs: Processes, start: dict,
              class_id, guidance):
  """The sampler's ``model_fn``: the network with the task's id, absent modalities fed fully
  noised, and guidance against the task's dropped condition when ``guidance > 0``.

  The network is a jitted function of its own, made afresh for each sampler: jax traces it once
  and reuses that trace for every call with the same shapes (conditional and unconditional, the
  sampler's loop body and its final step), which plain calls would trace one by one (2-4 times
  per sampler; tracing is most of a short run's sampling cost). Being new for each sampler, it
  never reuses a trace made under other flax contexts (axis rules, interceptors)."""
  network = jax.jit(functools.partial(denoise_network, model))
  cfg = model.cfg
  num, n_txt = start["tokens_T"].shape
  task_id = jnp.full((num,), TASK_IDS[spec.network_task], jnp.int32)
  null = jnp.full((num,), cfg.num_classes, jnp.int32)
  class_id = null if class_id is None else class_id
  ones = jnp.ones((num,), jnp.float32)
  all_mask = jnp.full((num, n_txt), cfg.mask_id, jnp.int32)

  def call(z, t_img, x, t_txt, class_id, text_absent):
    if start["image_absent"]:
      z, t_img = start["z_T"], ones
    if text_absent:
      x, t_txt = all_mask, ones
    sigma, _ = procs.text_noise(t_txt)
    image_out, text_out = network(variables, z, t_img, x, t_txt, sigma, class_id, task_id)
    return procs.image_eps(image_out, z, t_img), text_out

  def model_fn(z, t_img, x, t_txt):
    eps, log_score = call(z, t_img, x, t_txt, class_id, start["text_absent"])
    if guidance > 0 and spec.dropped is not None:
      drop_class = spec.dropped == "class"
      eps_u, _ = call(z, t_img, x, t_txt, null if drop_class else class_id,
                      start["text_absent"] or not drop_class)
      eps = samplers.cfg(eps, eps_u, guidance)
    return eps, log_score

  return model_fn


def _joint_in_stages(model, variables, rng, *, num, procs, sample_cfg, text, text_mask):
  """Joint samples as one modality, then the other given it, and for ``gibbs`` the caption
  again given that image (``joint_order``, module doc)."""
  k_first, k_second = jax.random.split(rng)
  kw = dict(num=num, procs=procs, sample_cfg=sample_cfg)
  if sample_cfg.joint_order == "image_first":
    images, _ = generate(model, variables, "class2img", k_first, **kw)
    k_caption = k_second
  else:
    _, tokens = generate(model, variables, "text", k_first, text=text, text_mask=text_mask, **kw)
    images, _ = generate(model, variables, "t2i", k_second, text=tokens, **kw)
    k_caption = jax.random.fold_in(k_second, 1)
  if sample_cfg.joint_order != "text_first":
    _, tokens = generate(model, variables, "caption", k_caption, images=images, text=text,
                         text_mask=text_mask, **kw)
  return images, tokens
