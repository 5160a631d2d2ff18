"""Generation: every task runs and holds its given parts clean; classifier-free guidance.

PRNG keys are ``unsafe_rbg`` and XLA's backend optimisations are off: both only cut compile time
(the tests are compile-bound). Zero-initialised kernels (heads, adaLN-Zero) are made random
so the network's outputs depend on all its inputs (and guidance has something to act on).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import samplers
from mdm_jax.diffusion.processes import Processes
from mdm_jax.generate import GEN_TASKS, SampleConfig, generate
from mdm_jax.losses import LossConfig
from mdm_jax.models.mdm import MDM, TASKS
from tiny_mdm import (FAST_COMPILE, NUM_CLASSES, TEXT_LEN, VOCAB, key, randomize_zero_kernels,
                      tiny_config)

NUM, PROMPT, NOISE_EPS = 2, 3, 1e-3


@pytest.fixture(scope="module")
def setup():
  model = MDM(tiny_config())
  rs = np.random.RandomState(0)
  inputs = dict(
      labels=jnp.asarray([3, 7], jnp.int32),
      caption=jnp.asarray(rs.randint(0, VOCAB, (NUM, TEXT_LEN)), jnp.int32),
      images=jnp.asarray(rs.uniform(-1, 1, (NUM, 8, 8, 1)), jnp.float32),
      # Left half known: patch-aligned (patch 2), so exactly the left 2 patch columns.
      image_mask=jnp.broadcast_to(jnp.arange(8)[None, None, :, None] < 4, (NUM, 8, 8, 1)),
      prompt_len=jnp.full((NUM,), PROMPT, jnp.int32))
  variables = nn.meta.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(
      key(0), inputs["images"], inputs["caption"]))
  params = randomize_zero_kernels(variables["params"], scale=0.3)
  variables = {"params": params, "latent_stats": {"vae": {"std": jnp.asarray([1.7, 0.8])}}}
  return model, variables, inputs


def procs(model, **loss):
  return Processes.build(model.cfg, LossConfig(**loss))


TASK_INPUTS = {"class2img": ("labels",), "t2i": ("text",), "caption": ("images",),
               "vqa": ("images", "text", "prompt_len"), "joint": (), "text": (),
               "inpaint": ("images", "image_mask", "labels")}


def task_kwargs(task, inputs):
  given = dict(inputs, text=inputs["caption"])
  return {k: given[k] for k in TASK_INPUTS[task]}


_compiled = {}


def run_generate(setup, task, seed=5, guidance=0.0, objective="score_entropy"):
  """Jitted generate, one compile per (task, guidance, objective)."""
  model, variables, inputs = setup
  k = (task, guidance, objective)
  if k not in _compiled:
    fn = functools.partial(generate, model, task=task, num=NUM,
                           procs=procs(model, objective=objective),
                           sample_cfg=SampleConfig(steps=2, guidance=guidance))
    _compiled[k] = jax.jit(lambda v, rng, kw: fn(v, rng=rng, **kw),
                           compiler_options=FAST_COMPILE)
  images, tokens = _compiled[k](variables, key(seed), task_kwargs(task, inputs))
  return np.asarray(images), np.asarray(tokens)


def reconstruct(setup, images):
  """The VAE reconstruction from the mean latent (what a held-clean image decodes to),
  clipped to the image range [-1, 1] as generated images are."""
  model, variables, _ = setup

  def rec(mdm, x):
    return jnp.clip(mdm.decode_image(mdm.encode_image(x)[0]), -1.0, 1.0)

  apply = jax.jit(functools.partial(model.apply, method=rec), compiler_options=FAST_COMPILE)
  return np.asarray(apply(variables, images))


@pytest.fixture(scope="module")
def denoise(setup):
  """MDM.denoise with the text noise sigma(t_txt) of the log-linear schedule, by hand."""
  model, variables, _ = setup

  @jax.jit(compiler_options=FAST_COMPILE)
  def fn(z, t_img, x, t_txt, class_id, task_id):
    sigma = -jnp.log1p(-(1 - NOISE_EPS) * t_txt)
    return model.apply(variables, z, t_img, x, t_txt, sigma, class_id, task_id,
                       method=MDM.denoise)

  return fn


@pytest.mark.parametrize("task", GEN_TASKS)
def test_every_task_runs_and_holds_given_parts(setup, task):
  _, _, inputs = setup
  images, tokens = run_generate(setup, task)
  assert images.shape == (NUM, 8, 8, 1) and images.dtype == np.float32
  assert tokens.shape == (NUM, TEXT_LEN) and tokens.dtype == np.int32
  assert np.all(np.isfinite(images))
  caption = np.asarray(inputs["caption"])
  given = np.asarray(inputs["images"])
  if task in ("caption", "vqa", "joint", "text"):
    assert np.all((tokens >= 0) & (tokens < VOCAB)), "generated text keeps [MASK] or bad ids"
  if task == "t2i":
    np.testing.assert_array_equal(tokens, caption)
  if task in ("caption", "vqa"):
    np.testing.assert_array_equal(images, given)
  if task == "vqa":
    np.testing.assert_array_equal(tokens[:, :PROMPT], caption[:, :PROMPT])
  if task == "inpaint":
    # Known latents are put back exactly; the decoder is per patch, so the known half decodes
    # to the VAE reconstruction of the given image, and the unknown half is sampled.
    recon = reconstruct(setup, inputs["images"])
    np.testing.assert_allclose(images[:, :, :4], recon[:, :, :4], rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(images[:, :, 4:] - recon[:, :, 4:])) > 1e-2
  if task in ("class2img", "t2i", "joint", "text", "inpaint"):
    assert np.max(np.abs(images[0] - images[1])) > 1e-3  # each example its own sample


def test_inpainting_free_region_depends_on_the_known_region(setup):
  # Same key, two different known halves: a sampler that ignored the known region (sampling
  # freely, then pasting it back) would draw the same free half for both.
  model, variables, inputs = setup
  other = dict(inputs, images=-inputs["images"])
  a, _ = run_generate(setup, "inpaint", seed=5)
  b, _ = run_generate((model, variables, other), "inpaint", seed=5)
  assert np.max(np.abs(a[:, :, :4] - b[:, :, :4])) > 1e-2  # the known halves differ ...
  assert np.max(np.abs(a[:, :, 4:] - b[:, :, 4:])) > 1e-3  # ... and so do the sampled ones


def test_generation_is_deterministic_in_the_key(setup):
  a = run_generate(setup, "joint", seed=5)
  b = run_generate(setup, "joint", seed=5)
  c = run_generate(setup, "joint", seed=6)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert np.max(np.abs(a[0] - c[0])) > 1e-3


def test_markov_ablation_generates(setup):
  images, tokens = run_generate(setup, "joint", objective="markov")
  assert np.all(np.isfinite(images))
  assert np.all((tokens >= 0) & (tokens < VOCAB))


def test_bad_requests_raise(setup):
  model, variables, inputs = setup
  p = procs(model)
  with pytest.raises(ValueError, match="unknown task"):
    generate(model, variables, "img2img", key(0), num=NUM, procs=p)
  with pytest.raises(ValueError, match="needs"):
    generate(model, variables, "vqa", key(0), num=NUM, procs=p, images=inputs["images"])


# --------------------------------------------------------------------------------- guidance


def test_cfg_formula():
  rs = np.random.RandomState(0)
  cond = (jnp.asarray(rs.randn(2, 3), jnp.float32), jnp.asarray(rs.randn(2, 4, 5), jnp.float32))
  uncond = (jnp.asarray(rs.randn(2, 3), jnp.float32), jnp.asarray(rs.randn(2, 4, 5), jnp.float32))
  for c, g in zip(cond, samplers.cfg(cond, uncond, 0.0)):
    np.testing.assert_array_equal(g, c)  # w = 0 is exactly the conditional output
  w = 1.5
  for c, u, g in zip(cond, uncond, samplers.cfg(cond, uncond, w)):
    np.testing.assert_allclose(g, 2.5 * np.asarray(c) - 1.5 * np.asarray(u), rtol=1e-6,
                               atol=1e-6)


def _captured_model_fn(setup, task, guidance, monkeypatch, caption_guidance=None, **loss):
  """generate's model_fn (for a model trained with LossConfig(**loss)), caught where generate
  hands it to samplers.joint_sample."""
  model, variables, inputs = setup
  caught = {}

  def fake_joint_sample(model_fn, z_T, tokens_T, *args, **kwargs):
    caught["model_fn"] = model_fn
    return z_T, tokens_T

  monkeypatch.setattr(samplers, "joint_sample", fake_joint_sample)
  generate(model, variables, task, key(0), num=NUM, procs=procs(model, **loss),
           sample_cfg=SampleConfig(steps=2, guidance=guidance,
                                   caption_guidance=(guidance if caption_guidance is None
                                                     else caption_guidance)),
           **task_kwargs(task, inputs))
  return caught["model_fn"]


def _count_denoise_calls(fn, *args):
  """fn(*args), and the network calls its program makes: MDM.denoise is one jitted function
  (traced once, called as often as the sampler needs), so its calls are counted in the jaxpr."""
  def calls(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      if eqn.params.get("name") == "denoise_network":
        n += 1
      for sub in jax_core.jaxprs_in_params(eqn.params):
        n += calls(sub)
    return n

  traced = jax.jit(fn).trace(*args)   # one trace: counted, then compiled
  return traced.lower().compile(FAST_COMPILE)(*args), calls(traced.jaxpr.jaxpr)


@pytest.mark.parametrize("task,guidance", [("class2img", 0.0), ("class2img", 1.5),
                                           ("t2i", 1.5)])
def test_guidance_combines_conditional_and_unconditional_calls(setup, denoise, task, guidance,
                                                               monkeypatch):
  """model_fn(z, t, x, t_txt) == (1 + w) eps(cond) - w eps(uncond), text log-scores unguided;
  with w = 0 the unconditional network call is never made."""
  _, _, inputs = setup
  model_fn = _captured_model_fn(setup, task, guidance, monkeypatch)
  rs = np.random.RandomState(1)
  z = jnp.asarray(rs.randn(NUM, 16, 4), jnp.float32)
  t_img = jnp.asarray([0.7, 0.3], jnp.float32)
  x = jnp.asarray(inputs["caption"]).at[:, 5:].set(VOCAB)
  t_txt = jnp.asarray([0.0, 0.0] if task == "t2i" else [0.5, 0.9], jnp.float32)
  (eps, log_score), n_calls = _count_denoise_calls(model_fn, z, t_img, x, t_txt)
  assert n_calls == (1 if guidance == 0 else 2)

  task_id = jnp.full((NUM,), TASKS.index(task), jnp.int32)
  null = jnp.full((NUM,), NUM_CLASSES, jnp.int32)
  absent = (jnp.full((NUM, TEXT_LEN), VOCAB, jnp.int32), jnp.ones((NUM,)))
  if task == "class2img":  # text absent in both; the class is dropped for uncond
    cond = denoise(z, t_img, *absent, inputs["labels"], task_id)
    uncond = denoise(z, t_img, *absent, null, task_id)
  else:  # t2i: the caption is dropped (absent) for uncond; null class in both
    cond = denoise(z, t_img, x, t_txt, null, task_id)
    uncond = denoise(z, t_img, *absent, null, task_id)
  want = (1 + guidance) * np.asarray(cond[0]) - guidance * np.asarray(uncond[0])
  np.testing.assert_allclose(eps, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(log_score, cond[1], rtol=1e-4, atol=1e-5)
  if guidance:
    assert np.max(np.abs(np.asarray(cond[0]) - np.asarray(uncond[0]))) > 1e-4


def _linear_alpha_sigma(t):
  """alpha(t), sigma(t) of the linear VP schedule (beta 0.1 -> 20), by hand."""
  t = np.asarray(t, np.float64)
  abar = np.exp(-(0.1 * t + 19.9 * t**2 / 2))
  return np.sqrt(abar), np.sqrt(1 - abar)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_v_head_read_as_eps_is_the_exact_denoiser_of_a_gaussian(schedule):
  """Data x0 ~ N(0, s^2 I): the exact v prediction, read through Processes.image_eps, is the
  exact eps prediction E[eps | z_t] = sigma z_t / (alpha^2 s^2 + sigma^2)."""
  p = Processes.build(tiny_config(), LossConfig(image_target="v", schedule=schedule))
  s = 0.7
  rs = np.random.RandomState(0)
  z = rs.randn(4, 16, 4)
  t = np.asarray([0.02, 0.3, 0.7, 0.99])
  a, sig = (np.asarray(f(jnp.asarray(t, jnp.float32)), np.float64)[:, None, None]
            for f in (p.image.alpha, p.image.sigma))
  denom = a**2 * s**2 + sig**2
  eps_star, x0_star = sig * z / denom, a * s**2 * z / denom
  v_star = a * eps_star - sig * x0_star
  got = p.image_eps(jnp.asarray(v_star, jnp.float32), jnp.asarray(z, jnp.float32),
                    jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(got, eps_star, rtol=1e-4, atol=1e-5)
  eps_head = Processes.build(tiny_config(), LossConfig(schedule=schedule))
  assert eps_head.image_eps(v_star, z, t) is v_star   # an eps head's output is eps already


def test_samplers_read_a_v_head_as_eps(setup, denoise, monkeypatch):
  """A model trained with loss.image_target="v": the sampler's model_fn returns
  sigma z + alpha v of the guided v output (alpha, sigma by hand), not v itself."""
  _, _, inputs = setup
  guidance = 1.5
  model_fn = _captured_model_fn(setup, "class2img", guidance, monkeypatch, image_target="v")
  rs = np.random.RandomState(1)
  z = jnp.asarray(rs.randn(NUM, 16, 4), jnp.float32)
  t_img = jnp.asarray([0.7, 0.05], jnp.float32)
  x = jnp.full((NUM, TEXT_LEN), VOCAB, jnp.int32)
  eps, _ = jax.jit(model_fn)(z, t_img, x, jnp.ones((NUM,)))
  task_id = jnp.full((NUM,), TASKS.index("class2img"), jnp.int32)
  null = jnp.full((NUM,), NUM_CLASSES, jnp.int32)
  v_cond = np.asarray(denoise(z, t_img, x, jnp.ones((NUM,)), inputs["labels"], task_id)[0])
  v_uncond = np.asarray(denoise(z, t_img, x, jnp.ones((NUM,)), null, task_id)[0])
  a, sig = (c[:, None, None] for c in _linear_alpha_sigma(t_img))
  want = sig * np.asarray(z) + a * ((1 + guidance) * v_cond - guidance * v_uncond)
  np.testing.assert_allclose(eps, want, rtol=1e-4, atol=1e-5)
  assert np.max(np.abs(want - ((1 + guidance) * v_cond - guidance * v_uncond))) > 0.1


@pytest.mark.parametrize("task,guidance,caption_guidance", [("class2img", 0.0, 2.0),
                                                            ("t2i", 2.0, 0.0)])
def test_class_and_caption_guidance_are_separate_weights(setup, monkeypatch, task, guidance,
                                                         caption_guidance):
  """The class weight does not guide t2i, nor the caption weight class2img: one network call."""
  _, _, inputs = setup
  model_fn = _captured_model_fn(setup, task, guidance, monkeypatch, caption_guidance)
  z = jnp.zeros((NUM, 16, 4), jnp.float32)
  _, n_calls = _count_denoise_calls(model_fn, z, jnp.full((NUM,), 0.5), inputs["caption"],
                                    jnp.zeros((NUM,)))
  assert n_calls == 1


def test_guidance_changes_the_generated_image(setup):
  plain, _ = run_generate(setup, "class2img", guidance=0.0)
  guided, _ = run_generate(setup, "class2img", guidance=3.0)
  assert np.max(np.abs(guided - plain)) > 1e-3


@pytest.mark.parametrize("order,stages", [
    ("text_first", (("text", "image absent"), ("t2i", "text clean"))),
    ("image_first", (("class2img", "text absent"), ("caption", "image clean"))),
    ("gibbs", (("text", "image absent"), ("t2i", "text clean"), ("caption", "image clean"))),
    ("together", (("joint", "same time"),)),
])
def test_joint_order_generates_one_modality_then_the_other(setup, order, stages):
  """Every network call of a joint sample, in order: (task, t_img, t_txt). ``text_first`` is
  the text task's steps + 1 calls with the image absent (t_img = 1), then t2i's with the
  caption clean (t_txt = 0); ``gibbs`` then captions that image (t_img = 0); ``together``
  moves both times on one grid."""
  model, variables, _ = setup
  seen = []

  def record(next_fun, a, kw, context):
    if isinstance(context.module, MDM) and context.method_name == "denoise":
      jax.debug.callback(lambda t_img, t_txt, task: seen.append(
          (TASKS[int(task[0])], float(t_img[0]), float(t_txt[0]))), a[1], a[3], a[6],
                         ordered=True)
    return next_fun(*a, **kw)

  steps = 2
  fn = functools.partial(generate, model, task="joint", num=NUM, procs=procs(model),
                         sample_cfg=SampleConfig(steps=steps, joint_order=order))
  with nn.intercept_methods(record):
    jax.block_until_ready(jax.jit(fn, compiler_options=FAST_COMPILE)(variables, rng=key(1)))
  jax.effects_barrier()
  assert [s[0] for s in seen] == [task for task, _ in stages for _ in range(steps + 1)]
  for i, (task, role) in enumerate(stages):
    calls = seen[i * (steps + 1):(i + 1) * (steps + 1)]
    t_img, t_txt = np.array([c[1] for c in calls]), np.array([c[2] for c in calls])
    moving = {"image absent": t_txt, "text clean": t_img, "text absent": t_img,
              "image clean": t_txt, "same time": t_img}[role]
    assert np.all(np.diff(moving) < 0) and moving[0] == 1.0
    held = {"image absent": (t_img, 1.0), "text clean": (t_txt, 0.0),
            "text absent": (t_txt, 1.0), "image clean": (t_img, 0.0),
            "same time": (t_txt, t_img)}[role]
    np.testing.assert_array_equal(held[0], np.broadcast_to(held[1], held[0].shape))


def test_unknown_joint_order_is_refused():
  with pytest.raises(ValueError, match="joint_order"):
    SampleConfig(joint_order="sideways")
