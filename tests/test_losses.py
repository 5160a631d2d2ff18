"""The total loss: the task table (what is clean, noised or absent), every term against a numpy
recomputation from the intercepted network inputs and outputs, the KL formula, the latent scale.

One jitted function serves every case: the task weights and the condition-dropout probability
are traced, the model's method calls are intercepted (``nn.intercept_methods``) and returned.
PRNG keys are ``unsafe_rbg`` and XLA's backend optimisations are off: both only cut compile time.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import score_entropy
from mdm_jax.diffusion.processes import Processes
from mdm_jax.losses import LossConfig, mask_answers, mdm_loss
from mdm_jax.models.mdm import MDM, TASKS, Denoiser
from mdm_jax.models.vae import UnifiedVAE, kl_to_standard_normal
from tiny_mdm import (FAST_COMPILE, NUM_CLASSES, TEXT_LEN, VOCAB, key, randomize_zero_kernels,
                      tiny_config)

BATCH, QUESTION_LEN = 6, 3
T_MIN, NOISE_EPS, BETA_MIN, BETA_MAX, BETA_KL = 1e-3, 1e-3, 0.1, 20.0, 1e-4
STD = np.array([2.0, 0.5], np.float32)  # latent_stats before the step (scale 1/std)


def test_kl_to_standard_normal_matches_closed_form():
  rs = np.random.RandomState(0)
  mu = rs.randn(3, 5, 4)
  log_sigma = 0.7 * rs.randn(3, 5, 4)
  s1 = np.exp(log_sigma)
  # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2.
  want = np.sum(np.log(1.0 / s1) + (s1**2 + mu**2) / 2.0 - 0.5, axis=-1)
  got = kl_to_standard_normal(jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert float(kl_to_standard_normal(jnp.zeros((4,)), jnp.zeros((4,)))) == 0.0


def test_loss_config_rejects_bad_values():
  with pytest.raises(ValueError, match="task_weights"):
    LossConfig(task_weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="objective"):
    LossConfig(objective="mse")


def _batch():
  rs = np.random.RandomState(0)
  return dict(image=rs.uniform(-1, 1, (BATCH, 8, 8, 1)).astype(np.float32),
              label=(np.arange(BATCH) % NUM_CLASSES).astype(np.int32),
              caption=rs.randint(0, VOCAB, (BATCH, TEXT_LEN)).astype(np.int32),
              vqa=rs.randint(0, VOCAB, (BATCH, TEXT_LEN)).astype(np.int32),
              vqa_prompt_len=np.full((BATCH,), QUESTION_LEN, np.int32))


@pytest.fixture(scope="module")
def run_loss():
  """(task_weights, cond_drop) -> numpy dict of the terms, the intercepted calls and grads."""
  model = MDM(tiny_config())
  batch = jax.tree.map(jnp.asarray, _batch())
  variables = nn.meta.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(
      key(0), batch["image"], batch["caption"]))
  params = randomize_zero_kernels(variables["params"])
  stats = {"vae": {"std": jnp.asarray(STD)}}

  @jax.jit(compiler_options=FAST_COMPILE)
  def fn(params, task_weights, cond_drop):
    lc = LossConfig(task_weights=tuple(task_weights[i] for i in range(len(TASKS))),
                    cond_drop=cond_drop, t_min=T_MIN, noise_eps=NOISE_EPS,
                    beta_kl=BETA_KL)

    def loss(p):
      seen = {}

      def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module, name = context.module, context.method_name
        if isinstance(module, MDM) and name in ("encode_image", "decode_image", "encode_text",
                                                  "decode_text", "latent_scale", "denoise"):
          seen[name] = dict(args=args, out=out)
        if isinstance(module, UnifiedVAE) and name == "encode_text":
          seen.setdefault("vae_encode_text", []).append(dict(args=args, out=out))
        if isinstance(module, Denoiser) and name == "__call__":
          seen["denoiser_z_txt"] = args[2]
        return out

      with nn.intercept_methods(record):
        (total, terms), new_stats = model.apply({"params": p, "latent_stats": stats}, batch,
                                                key(3), lc, method=mdm_loss,
                                                mutable=["latent_stats"])
      return terms["diff_img"] + terms["diff_txt"], (total, terms, seen, new_stats)

    grads, aux = jax.grad(loss, has_aux=True)(params)
    return aux, grads

  cache = {}

  def run(task_weights, cond_drop=0.0):
    k = (tuple(task_weights), cond_drop)
    if k not in cache:
      (total, terms, seen, new_stats), grads = fn(params, jnp.asarray(task_weights, jnp.float32),
                                                  jnp.float32(cond_drop))
      cache[k] = jax.tree.map(np.asarray, dict(total=total, terms=terms, seen=seen,
                                               new_stats=new_stats, grads=grads))
    return cache[k]

  return run


def one_hot(task):
  return tuple(float(t == task) for t in TASKS)


def _log_alpha(t):
  return -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def check_task_table(denoise_args, batch):
  """Per example, the paper's task table (``mdm_jax.tasks``; cond_drop 0)."""
  _, t_img, x_t, t_txt, _, class_id, task_id = denoise_args[:7]
  for i, task in enumerate(np.asarray(TASKS)[task_id]):
    text0 = batch["vqa"][i] if task == "vqa" else batch["caption"][i]
    want_t_img = {"caption": 0.0, "vqa": 0.0, "text": 1.0}.get(task)
    want_t_txt = {"t2i": 0.0, "class2img": 1.0}.get(task)
    for t, want in ((t_img[i], want_t_img), (t_txt[i], want_t_txt)):
      assert (T_MIN <= t <= 1.0) if want is None else t == want, (task, t, want)
    assert class_id[i] == (batch["label"][i] if task == "class2img" else NUM_CLASSES)
    if task == "class2img":
      np.testing.assert_array_equal(x_t[i], VOCAB)  # text absent: all [MASK]
    elif task == "t2i":
      np.testing.assert_array_equal(x_t[i], text0)  # caption clean
    else:
      assert np.all((x_t[i] == text0) | (x_t[i] == VOCAB))  # absorbing noise only
      if task == "vqa":  # the question clean, the answer's first token always masked
        np.testing.assert_array_equal(x_t[i, :QUESTION_LEN], text0[:QUESTION_LEN])
        assert x_t[i, QUESTION_LEN] == VOCAB


@pytest.mark.parametrize("task", TASKS)
def test_task_table_and_every_term(run_loss, task):
  out = run_loss(one_hot(task))
  seen, terms = out["seen"], out["terms"]
  batch = _batch()
  z_img_t, t_img, x_t, t_txt, sigma, class_id, task_id = seen["denoise"]["args"][:7]
  eps_pred, log_score = seen["denoise"]["out"]
  mask_id = VOCAB
  text0 = batch["vqa"] if task == "vqa" else batch["caption"]

  np.testing.assert_array_equal(task_id, TASKS.index(task))
  check_task_table(seen["denoise"]["args"], batch)
  if task in ("class2img", "t2i", "joint"):
    assert np.unique(t_img).size == BATCH  # t_img ~ U per example
  if task in ("caption", "vqa", "joint", "text"):
    assert np.unique(t_txt).size == BATCH
  if task == "joint":
    assert np.all(t_img != t_txt)  # each modality has its own time

  # Latent scale: the EMA-updated std of the sampled latents, as 1 / std.
  z_i = seen["decode_image"]["args"][0]
  z_t = seen["decode_text"]["args"][0]
  new_std = np.array([0.99 * STD[0] + 0.01 * np.std(z_i), 0.99 * STD[1] + 0.01 * np.std(z_t)])
  np.testing.assert_allclose(out["new_stats"]["latent_stats"]["vae"]["std"], new_std, rtol=1e-5)
  scale = seen["latent_scale"]["out"]
  np.testing.assert_allclose(scale, 1.0 / new_std, rtol=1e-5)
  # The denoiser sees the unit-variance VAE mean of the noised ids.
  mu_xt = seen["vae_encode_text"][-1]["out"][0]
  np.testing.assert_array_equal(seen["vae_encode_text"][-1]["args"][0], x_t)
  np.testing.assert_allclose(seen["denoiser_z_txt"], mu_xt * scale[1], rtol=1e-5, atol=1e-6)

  # Image diffusion input x_t = alpha z0 + sigma eps with z0 = scale * z; recover eps.
  z0 = z_i * scale[0]
  a = np.exp(_log_alpha(t_img.astype(np.float64)))[:, None, None]
  s = np.sqrt(1.0 - a**2)
  if task in ("caption", "vqa"):
    np.testing.assert_allclose(z_img_t, z0, rtol=1e-6, atol=1e-6)  # image clean
  else:
    eps = (z_img_t - a * z0) / s
    assert abs(eps.mean()) < 0.2 and 0.8 < eps.std() < 1.2  # unit Gaussian noise was added

  # Every term against numpy.
  mu_i, ls_i = seen["encode_image"]["out"]
  mu_t, ls_t = seen["encode_text"]["out"]
  np.testing.assert_array_equal(seen["encode_text"]["args"][0], text0)
  recon = seen["decode_image"]["out"]
  np.testing.assert_allclose(terms["rec_img"], np.mean((recon - batch["image"])**2), rtol=1e-5)
  logp = _np_log_softmax(seen["decode_text"]["out"].astype(np.float64))
  ce = -np.take_along_axis(logp, text0[..., None], -1).mean()
  np.testing.assert_allclose(terms["rec_txt"], ce, rtol=1e-5)
  kl = lambda m, ls: np.mean(np.sum(0.5 * (m**2 + np.exp(2 * ls) - 1 - 2 * ls), -1))
  np.testing.assert_allclose(terms["kl"], 0.5 * (kl(mu_i, ls_i) + kl(mu_t, ls_t)), rtol=1e-4)

  image_loss = task in ("class2img", "t2i", "joint")
  want_img = np.mean((eps_pred - eps)**2) if image_loss else 0.0
  np.testing.assert_allclose(terms["diff_img"], want_img, rtol=1e-4, atol=1e-7)

  t64 = t_txt.astype(np.float64)
  np.testing.assert_allclose(sigma, -np.log1p(-(1 - NOISE_EPS) * t64), rtol=1e-5, atol=1e-7)
  if task in ("class2img", "t2i"):
    want_txt = 0.0
  else:
    # SEDD absorbing denoising score entropy at masked, generated positions, times dsigma;
    # summed over tokens and divided by the text length, then averaged over examples.
    sig = sigma.astype(np.float64)[:, None]
    dsig = ((1 - NOISE_EPS) / (1 - (1 - NOISE_EPS) * t64))[:, None]
    r = 1.0 / np.expm1(sig)
    ls = log_score.astype(np.float64)
    per_tok = (np.exp(ls[..., :VOCAB]).sum(-1)
               - r * np.take_along_axis(ls, text0[..., None], -1)[..., 0]
               + r * (np.log(r) - 1))
    generated = np.arange(TEXT_LEN)[None] >= (QUESTION_LEN if task == "vqa" else 0)
    per_tok = np.where((x_t == mask_id) & generated, dsig * per_tok, 0.0)
    if task == "vqa":  # the answer's term times the probability that it is masked
      per_tok[:, QUESTION_LEN] *= 1.0 - np.exp(-sig[:, 0])
    want_txt = np.mean(per_tok.sum(1) / TEXT_LEN)
  np.testing.assert_allclose(terms["diff_txt"], want_txt, rtol=1e-4, atol=1e-7)
  assert (terms["diff_txt"] > 0) == (task not in ("class2img", "t2i"))

  np.testing.assert_allclose(
      terms["loss"],
      terms["rec_img"] + terms["rec_txt"] + BETA_KL * terms["kl"] + want_img + want_txt,
      rtol=1e-5)
  for name in TASKS:
    want = want_img + want_txt if name == task else 0.0
    np.testing.assert_allclose(terms[f"task/{name}"], want, rtol=1e-5, atol=1e-7)

  # grad_to_encoder=False: the diffusion terms never reach the VAE.
  grads = out["grads"]
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads["vae"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["denoiser"]))


def test_mask_answers_integrates_out_the_answers_mask():
  """The always-masked, weighted answer term is the mean of the drawn one over the forward
  process's masks: the oracle is the absorbing transition sampled many times."""
  cfg = tiny_config()
  procs = Processes.build(cfg, LossConfig())
  rs = np.random.RandomState(0)
  b, draws = 5, 40_000
  text0 = jnp.asarray(rs.randint(0, VOCAB, (b, TEXT_LEN)), jnp.int32)
  prompt_len = jnp.asarray([1, 2, 3, 0, 4], jnp.int32)
  task = jnp.asarray([TASKS.index("vqa")] * 3 + [TASKS.index("caption"), TASKS.index("vqa")])
  t = jnp.asarray([0.2, 0.5, 0.9, 0.5, 0.05], jnp.float32)
  sigma, dsigma = procs.text_noise(t)
  log_score = jnp.asarray(rs.randn(b, TEXT_LEN, VOCAB + 1), jnp.float32)  # fixed, any x_t
  generated = jnp.arange(TEXT_LEN)[None] >= prompt_len[:, None]
  answer = np.arange(TEXT_LEN)[None] == np.asarray(prompt_len)[:, None]

  @jax.jit
  def drawn(k):
    x_t = procs.graph.sample_transition(k, text0, sigma[:, None])
    x_t = jnp.where(generated, x_t, text0)
    return score_entropy.score_entropy_loss(log_score, sigma[:, None], dsigma[:, None], x_t,
                                            text0, procs.graph, mask=generated)

  per_draw = np.asarray(jax.lax.map(drawn, jax.random.split(key(1), draws)))  # (draws, b, T)
  x_t, weight = mask_answers(procs, task, text0, prompt_len, sigma)
  x_t, weight = np.asarray(x_t), np.asarray(weight)
  vqa = np.asarray(task) == TASKS.index("vqa")
  # Prompted examples' answers are [MASK], nothing else changes; weights 1 elsewhere.
  np.testing.assert_array_equal(x_t, np.where(answer & vqa[:, None], VOCAB, text0))
  np.testing.assert_array_equal(weight[~(answer & vqa[:, None])], 1.0)
  forced = np.asarray(score_entropy.score_entropy_loss(
      log_score, sigma[:, None], dsigma[:, None], jnp.asarray(x_t), text0, procs.graph,
      mask=generated)) * weight
  for i in np.where(vqa)[0]:
    a = int(prompt_len[i])
    samples = per_draw[:, i, a]
    se = samples.std() / np.sqrt(draws)
    assert abs(forced[i, a] - samples.mean()) < 4 * se + 1e-6, (i, forced[i, a], samples.mean())


def test_condition_dropout_drops_class_and_caption(run_loss):
  class2img = run_loss(one_hot("class2img"), cond_drop=1.0)["seen"]["denoise"]["args"]
  np.testing.assert_array_equal(class2img[5], NUM_CLASSES)  # null class
  t2i = run_loss(one_hot("t2i"), cond_drop=1.0)
  x_t, t_txt = t2i["seen"]["denoise"]["args"][2:4]
  np.testing.assert_array_equal(x_t, VOCAB)  # caption absent: all [MASK] at t = 1
  np.testing.assert_array_equal(t_txt, 1.0)
  assert t2i["terms"]["diff_img"] > 0 and t2i["terms"]["diff_txt"] == 0


def test_task_mixture_follows_the_table_per_example(run_loss):
  out = run_loss(tuple(1.0 for _ in TASKS))
  args = out["seen"]["denoise"]["args"]
  assert np.unique(args[6]).size > 2  # a real mixture
  check_task_table(args, _batch())
  for name in TASKS:
    assert np.isfinite(out["terms"][f"task/{name}"])


def test_data_without_text_trains_class2img_alone():
  """A batch without ``caption`` (e.g. ImageNet) under every task weight trains what the same
  images with captions train under class2img-only weights: every example class2img, text
  absent, the same image terms; no text reconstruction, and the image KL alone."""
  model = MDM(tiny_config())
  full = jax.tree.map(jnp.asarray, _batch())
  no_text = {k: full[k] for k in ("image", "label")}
  variables = nn.meta.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(
      key(0), full["image"], full["caption"]))
  params = randomize_zero_kernels(variables["params"])
  stats = {"vae": {"std": jnp.asarray(STD)}}

  def run(batch, weights):
    lc = LossConfig(task_weights=weights, cond_drop=0.0, t_min=T_MIN, noise_eps=NOISE_EPS,
                    beta_kl=BETA_KL)

    def loss(p):
      # latent_stats immutable: the text latents' scale stays the same in both runs (with
      # captions the step would also measure the text latents' std, which scales them).
      return model.apply({"params": p, "latent_stats": stats}, batch, key(3), lc,
                         method=mdm_loss)

    (_, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return terms, grads

  fn = jax.jit(run, static_argnums=1, compiler_options=FAST_COMPILE)
  got, got_grads = jax.tree.map(np.asarray, fn(no_text, (1.0,) * len(TASKS)))
  want, want_grads = jax.tree.map(np.asarray, fn(full, one_hot("class2img")))
  assert got["task/class2img"] > 0
  for name in TASKS[1:]:
    assert got[f"task/{name}"] == 0.0, name
  for k in ("diff_img", "rec_img", "task/class2img"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
  assert got["rec_txt"] == 0.0 and got["diff_txt"] == 0.0
  mu, log_sigma = model.apply({"params": params, "latent_stats": stats}, full["image"],
                              method=MDM.encode_image)
  kl_img = float(np.mean(kl_to_standard_normal(mu, log_sigma)))
  np.testing.assert_allclose(got["kl"], kl_img, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], got["rec_img"] + BETA_KL * kl_img + got["diff_img"],
                             rtol=1e-5)
  # The text side gets no gradient (nothing to reconstruct, the [MASK] ids enter without one).
  for name in ("vocab_out", "token_embed"):
    assert not np.any(jax.tree.leaves(got_grads["vae"][name])[0]), name
    assert np.any(jax.tree.leaves(want_grads["vae"][name])[0]), name


def test_markov_text_bound_of_a_uniform_denoiser_is_log_vocab():
  """The Markov ablation's likelihood bound (the continuous-time absorbing ELBO) against its
  closed form: at init the text head outputs zeros, so p(x0 | x_t) is uniform over the V tokens
  and every masked token costs log V. With sigma(t) = -log(1 - (1 - eps) t) a token is masked
  with probability 1 - e^-sigma, and dsigma / (e^sigma - 1) * (1 - e^-sigma) = 1 - eps at every
  t, so the bound is T (1 - eps) log V per sequence whatever t is drawn."""
  from mdm_jax.evaluation import perplexity
  from mdm_jax.losses import text_nll_bound
  model = MDM(tiny_config())
  text0 = jnp.asarray(np.random.RandomState(1).randint(0, VOCAB, (16, TEXT_LEN)), jnp.int32)
  image = jnp.zeros((1, 8, 8, 1), jnp.float32)
  variables = nn.meta.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(
      key(0), image, text0[:1]))
  variables = {"params": variables["params"], "latent_stats": {"vae": {"std": jnp.asarray(STD)}}}

  lc = LossConfig(objective="markov", t_min=T_MIN, noise_eps=NOISE_EPS)
  # 64 independent draws per sequence (the bound's small-t terms are heavy-tailed: fewer draws
  # would need a looser tolerance).
  draws = jax.jit(lambda rng: model.apply(variables, text0, rng, lc, 64, method=text_nll_bound),
                  compiler_options=FAST_COMPILE)
  got = np.asarray(perplexity.sedd_nll_bound(draws(key(5))))
  want = TEXT_LEN * (1 - NOISE_EPS) * np.log(VOCAB)
  np.testing.assert_allclose(got.mean(), want, rtol=0.05)
  assert np.all(got > 0.5 * want) and np.all(got < 1.5 * want)
