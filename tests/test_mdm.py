"""The MDM model: every task's loss and gradients, VAE reconstruction, scan-order causality,
the absorbing log-score parameterisation.

Compiles dominate the runtime on CPU, so every test reuses one jitted function across its cases
(the task is forced through traced ``task_weights``), every PRNG key is an ``unsafe_rbg`` key
(XLA compiles threefry's bit mixing slowly: ~2x the whole loss-gradient compile), and every jit
skips XLA's backend optimisation passes (``FAST_COMPILE``: ~40% less compile time, same math).
"""
from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdm_jax.diffusion import score_entropy as se
from mdm_jax.losses import LossConfig, mdm_loss
from mdm_jax.models.mdm import (MDM, TASKS, Denoiser, MDMConfig, PooledTextEmbedding,
                                absorbing_log_score)
from tiny_mdm import (FAST_COMPILE, NUM_CLASSES, TEXT_LEN, VOCAB, abstract_inputs, key,
                      only_layer, randomize_zero_kernels, tiny_config, token_dependencies)

BATCH = 6
QUESTION_LEN = 3


def make_batch():
  rs = np.random.RandomState(0)
  caption = rs.randint(0, VOCAB, (BATCH, TEXT_LEN)).astype(np.int32)
  vqa = rs.randint(0, VOCAB, (BATCH, TEXT_LEN)).astype(np.int32)
  return dict(image=jnp.asarray(rs.uniform(-1, 1, (BATCH, 8, 8, 1)).astype(np.float32)),
              label=jnp.arange(BATCH, dtype=jnp.int32) % 10,
              caption=jnp.asarray(caption), vqa=jnp.asarray(vqa),
              vqa_prompt_len=jnp.full((BATCH,), QUESTION_LEN, jnp.int32))


def init_model(cfg: MDMConfig):
  """Real init, then ``randomize_zero_kernels``."""
  model = MDM(cfg)
  batch = make_batch()
  init = jax.jit(model.init, compiler_options=FAST_COMPILE)
  variables = nn.meta.unbox(init(key(0), batch["image"], batch["caption"]))
  return model, randomize_zero_kernels(variables["params"]), variables["latent_stats"]


def make_loss_and_grad(model, stats):
  """jit(params, task_weights (6,), objective) -> ((loss, terms), grads).

  The weights are traced, so one compile serves every task (cond_drop 0: no dropped condition).
  """
  batch = make_batch()

  @jax.jit(static_argnames="objective", compiler_options=FAST_COMPILE)
  def loss_and_grad(params, task_weights, objective):
    lc = LossConfig(task_weights=tuple(task_weights[i] for i in range(len(TASKS))),
                    cond_drop=0.0, objective=objective)
    fn = lambda p: model.apply({"params": p, "latent_stats": stats}, batch, key(3), lc,
                               method=mdm_loss)
    return jax.value_and_grad(fn, has_aux=True)(params)

  return lambda params, weights, objective="score_entropy": loss_and_grad(
      params, jnp.asarray(weights, jnp.float32), objective=objective)


@pytest.fixture(scope="module")
def default_model():
  model, params, stats = init_model(tiny_config())
  return model, params, stats, make_loss_and_grad(model, stats)


def _abs_sum(tree):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


IMAGE_LOSS_TASKS = {"class2img", "t2i", "joint"}
TEXT_LOSS_TASKS = {"caption", "vqa", "joint", "text"}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_the_right_parts(default_model, task):
  _, params, _, loss_and_grad = default_model
  (loss, terms), grads = loss_and_grad(params, np.eye(len(TASKS))[TASKS.index(task)])
  assert np.isfinite(float(loss))
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), f"non-finite gradient at {jax.tree_util.keystr(path)}"
  den = grads["denoiser"]

  # Diffusion terms: only the modality the task generates carries a loss.
  assert (float(terms["diff_img"]) > 0) == (task in IMAGE_LOSS_TASKS)
  assert (float(terms["diff_txt"]) > 0) == (task in TEXT_LOSS_TASKS)
  assert (_abs_sum(den["eps_head"]) > 0) == (task in IMAGE_LOSS_TASKS)
  assert (_abs_sum(den["score_head"]) > 0) == (task in TEXT_LOSS_TASKS)
  for name in TASKS:
    value = float(terms[f"task/{name}"])
    assert (value > 0) == (name == task), (name, value)
  np.testing.assert_allclose(
      float(terms[f"task/{task}"]), float(terms["diff_img"]) + float(terms["diff_txt"]),
      rtol=1e-5)

  # The backbone and the VAE (reconstruction terms) always train.
  assert _abs_sum(den["layers"]["mixer"]["in_proj"]) > 0
  assert _abs_sum(grads["vae"]["encoder"]) > 0
  assert _abs_sum(grads["vae"]["decoder"]) > 0

  # Conditioning tokens: the class embedding row of the label only for class2img (cond_drop 0),
  # the null row otherwise; the task embedding only in the task's own row.
  class_rows = np.abs(np.asarray(den["class_embed"]["embedding"])).sum(-1)
  labels = np.arange(BATCH) % 10
  if task == "class2img":
    assert np.all(class_rows[labels] > 0) and class_rows[10] == 0
  else:
    assert np.all(class_rows[:10] == 0) and class_rows[10] > 0
  task_rows = np.abs(np.asarray(den["task_embed"]["embedding"])).sum(-1)
  assert task_rows[TASKS.index(task)] > 0
  assert np.count_nonzero(task_rows) == 1


# The Markov mix includes t2i: its clean text (sigma = 0) once gave NaN gradients through
# markov.absorbing_elbo_loss's infinite weight at unmasked positions.
@pytest.mark.parametrize("overrides,objective,weights", [
    (dict(selective=False, directions=1, row_end_tokens=True), "markov", (1, 1, 1, 1, 1, 1)),
    (dict(backbone="transformer"), "score_entropy", (1, 1, 1, 1, 1, 1)),
], ids=["lti-1dir-rowend-markov", "transformer"])
def test_ablation_variants_train(overrides, objective, weights):
  model, params, stats = init_model(tiny_config(**overrides))
  loss_and_grad = make_loss_and_grad(model, stats)
  (loss, terms), grads = loss_and_grad(params, weights, objective)
  assert np.isfinite(float(loss))
  assert float(terms["diff_img"]) > 0 and float(terms["diff_txt"]) > 0
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), f"non-finite gradient at {jax.tree_util.keystr(path)}"
  den = grads["denoiser"]
  assert _abs_sum(den["eps_head"]) > 0 and _abs_sum(den["score_head"]) > 0
  mixer = den["layers"]["mixer"]
  if overrides.get("backbone") == "transformer":
    assert _abs_sum(mixer["qkv"]) > 0
  else:
    # The LTI ablation learns input-independent B and C.
    assert _abs_sum(mixer["B"]) > 0 and _abs_sum(mixer["C"]) > 0
  if overrides.get("row_end_tokens"):
    assert _abs_sum(den["row_end_token"]) > 0


def test_bad_config_and_input_raise():
  with pytest.raises(ValueError, match="backbone"):
    tiny_config(backbone="rnn")
  with pytest.raises(ValueError, match="directions"):
    tiny_config(directions=2)
  with pytest.raises(ValueError, match="patch_size"):
    tiny_config(image_size=9)
  with pytest.raises(ValueError, match="scan_unroll"):
    tiny_config(scan_unroll=0)


def test_unrolled_layer_scan_is_the_loop_over_the_layers():
  """``scan_unroll`` changes how the layer scan runs, not what it computes nor the stacked
  parameters a checkpoint holds: with 2 of 3 layers per iteration (a remainder), the loss and
  every gradient equal those of a Python loop over the layers (``scan_layers=False``) given each
  layer's slice of the same parameters."""
  cfg = tiny_config(n_layers=3, scan_unroll=2)
  model, params, stats = init_model(cfg)
  rolled = jax.eval_shape(MDM(tiny_config(n_layers=3)).init, key(0), *abstract_inputs(cfg)[1:])
  assert jax.tree.structure(nn.meta.unbox(rolled)["params"]) == jax.tree.structure(params)

  loop_model = MDM(tiny_config(n_layers=3, scan_layers=False))
  layer = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
  denoiser = {k: v for k, v in params["denoiser"].items() if k != "layers"}
  loop_params = dict(params, denoiser=denoiser)
  for i in range(3):
    denoiser[f"layers_{i}"] = layer(params["denoiser"]["layers"], i)

  weights = np.ones(len(TASKS))
  (loss, _), grads = make_loss_and_grad(model, stats)(params, weights)
  (loop_loss, _), loop_grads = make_loss_and_grad(loop_model, stats)(loop_params, weights)
  np.testing.assert_allclose(float(loss), float(loop_loss), rtol=1e-5)
  for i in range(3):
    chex.assert_trees_all_close(layer(grads["denoiser"]["layers"], i),
                                loop_grads["denoiser"][f"layers_{i}"], rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(grads["denoiser"]["eps_head"], loop_grads["denoiser"]["eps_head"],
                              rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(grads["vae"], loop_grads["vae"], rtol=1e-4, atol=1e-6)


def test_wrong_image_shape_raises(default_model):
  model, params, stats, _ = default_model
  with pytest.raises(ValueError, match="image_size"):
    model.apply({"params": params, "latent_stats": stats}, jnp.zeros((1, 6, 6, 1)),
                method=MDM.encode_image)


# ------------------------------------------------------------------------ VAE reconstruction


def test_vae_overfits_a_batch_of_random_images():
  """Encode to the mean, decode, and train only the VAE with Adam on one batch of noise."""
  model = MDM(tiny_config(vae_depth=2))
  images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32))
  init = jax.jit(model.init, compiler_options=FAST_COMPILE)
  variables = nn.meta.unbox(init(key(0), images, jnp.zeros((4, TEXT_LEN), jnp.int32)))
  params, stats = variables["params"], variables["latent_stats"]
  variance = float(np.var(np.asarray(images)))

  def reconstruct(mdm, x):
    mu, _ = mdm.encode_image(x)
    return mdm.decode_image(mu)

  def mse(vae_params):
    recon = model.apply({"params": dict(params, vae=vae_params), "latent_stats": stats}, images,
                        method=reconstruct)
    return jnp.mean((recon - images)**2)

  opt = optax.adam(3e-3)
  steps = 300  # measured: ~0.05 var at 50 steps, ~0.003 var at 150, < 0.005 var from 200 on

  @jax.jit(compiler_options=FAST_COMPILE)
  def train(vae_params):
    def step(carry, _):
      p, state = carry
      loss, g = jax.value_and_grad(mse)(p)
      updates, state = opt.update(g, state, p)
      return (optax.apply_updates(p, updates), state), loss
    (p, _), losses = jax.lax.scan(step, (vae_params, opt.init(vae_params)), None, length=steps)
    return losses[0], mse(p)

  first, final = map(float, train(params["vae"]))
  assert first > 0.5 * variance  # not trivially reconstructed at init
  assert final < 0.02 * variance, (final, variance)


# ------------------------------------------------------------------------ scan-order causality


def _scan_rank(order: int, gh: int, gw: int) -> np.ndarray:
  """Position in the scan of each row-major grid token, written out per order by hand."""
  r, c = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  n = gh * gw
  rank = {0: r * gw + c, 1: n - 1 - (r * gw + c), 2: c * gh + r, 3: n - 1 - (c * gh + r)}[order]
  return rank.reshape(-1)


def test_denoiser_layers_scan_the_grid_in_their_orders():
  """Keep only layer l's mixer (zero the other layers' out_proj): then the Denoiser's output at
  content token k depends on the input latent at token j iff j comes no later than k in layer
  l's scan: image order l mod 4 (0 row-major, 1 row-major reversed, 2 column-major, 3 column-major
  reversed), text order l mod 2 (forward, reversed), and the text segment scanned before the
  image when the text order is reversed (otherwise after it).

  Row-end tokens make the scanned grid 3 x 4 (non-square), so row/column mix-ups show.
  """
  cfg = tiny_config(image_size=6, max_text_len=4, n_layers=4, row_end_tokens=True,
                    text_pool_cond=False)  # the pooled caption reaches every token; own test
  gh, gw = cfg.grid
  n_img, n_txt, d_lat = gh * gw, cfg.max_text_len, cfg.latent_dim
  den = Denoiser(cfg)
  rs = np.random.RandomState(0)
  z_img = jnp.asarray(rs.randn(1, n_img, d_lat).astype(np.float32))
  z_txt = jnp.asarray(rs.randn(1, n_txt, d_lat).astype(np.float32))
  ids = jnp.asarray([[3, VOCAB, 7, VOCAB]], jnp.int32)
  scalars = (jnp.array([0.5]), jnp.array([0.4]), jnp.array([1.0]))
  ints = (jnp.array([2]), jnp.array([4]))

  def apply(p, zi, zt):
    return den.apply(p, zi, scalars[0], zt, scalars[1], scalars[2], ids, *ints)

  init = jax.jit(den.init, compiler_options=FAST_COMPILE)
  params = nn.meta.unbox(init(key(0), z_img, scalars[0], z_txt, scalars[1], scalars[2], ids,
                              *ints))["params"]
  params = randomize_zero_kernels(params, scale=0.5)

  dependencies = token_dependencies(apply, z_img, z_txt)   # [out, in]: image, then text

  # Real image tokens in the (gh, gw + 1) scanned grid (its last column: row-end tokens).
  real = np.arange(gh * (gw + 1)).reshape(gh, gw + 1)[:, :gw].reshape(-1)
  n_grid = gh * (gw + 1)
  for layer in range(4):
    dep = np.asarray(dependencies(only_layer(params, layer)))

    text_first = layer % 2 == 1
    t = np.arange(n_txt)
    rank_txt = (n_txt - 1 - t) if text_first else t + n_grid
    rank_img = _scan_rank(layer, gh, gw + 1)[real] + (n_txt if text_first else 0)
    rank = np.concatenate([rank_img, rank_txt])
    np.testing.assert_array_equal(dep > 0, rank[None, :] <= rank[:, None],
                                  err_msg=f"layer {layer}: [out, in] dependencies")


@pytest.mark.parametrize("text_id_embed", [True, False])
def test_noised_text_ids_reach_the_network_only_through_their_embedding(text_id_embed):
  """Same text latents, different noised ids ([MASK] against a word): the image output changes
  iff ``text_id_embed`` is on (off: the paper's latents-only input, ids only fix the score's
  current-token entry)."""
  cfg = tiny_config(text_id_embed=text_id_embed, text_pool_cond=False)  # the sequence input only
  den = Denoiser(cfg)
  rs = np.random.RandomState(0)
  z_img = jnp.asarray(rs.randn(1, cfg.n_image_tokens, cfg.latent_dim).astype(np.float32))
  z_txt = jnp.asarray(rs.randn(1, cfg.max_text_len, cfg.latent_dim).astype(np.float32))
  ids_a = jnp.full((1, cfg.max_text_len), VOCAB, jnp.int32)
  ids_b = ids_a.at[0, 2].set(5)
  args = lambda ids: (z_img, jnp.array([0.5]), z_txt, jnp.array([0.4]), jnp.array([1.0]), ids,
                      jnp.array([2]), jnp.array([4]))
  params = nn.meta.unbox(jax.jit(den.init, compiler_options=FAST_COMPILE)(key(0), *args(ids_a)))
  params = randomize_zero_kernels(params["params"], scale=0.5)
  assert ("text_id_embed" in params) == text_id_embed
  apply = jax.jit(lambda ids: den.apply({"params": params}, *args(ids))[0],
                  compiler_options=FAST_COMPILE)
  change = float(jnp.max(jnp.abs(apply(ids_a) - apply(ids_b))))
  if text_id_embed:
    assert change > 1e-3
  else:
    assert change == 0.0


@pytest.mark.parametrize("text_pool_cond", [True, False])
def test_pooled_caption_reaches_the_image_without_the_scan(text_pool_cond):
  """With every mixer's output zeroed no token reads another through the sequence (each block is
  then its per-token SwiGLU, modulated by adaLN). The image output then changes with the
  caption iff the pooled caption is in the adaLN input, and it is blind to the caption's order
  (a mean: reversing the text tokens changes nothing)."""
  cfg = tiny_config(text_pool_cond=text_pool_cond, mlp_ratio=2.0)
  den = Denoiser(cfg)
  rs = np.random.RandomState(0)
  z_img = jnp.asarray(rs.randn(1, cfg.n_image_tokens, cfg.latent_dim).astype(np.float32))
  z_txt = jnp.asarray(rs.randn(1, cfg.max_text_len, cfg.latent_dim).astype(np.float32))
  ids = jnp.asarray(rs.randint(0, VOCAB, (1, cfg.max_text_len)), jnp.int32)
  args = lambda zt, i: (z_img, jnp.array([0.5]), zt, jnp.array([0.0]), jnp.array([1e-3]), i,
                        jnp.array([NUM_CLASSES]), jnp.array([1]))
  params = nn.meta.unbox(jax.jit(den.init, compiler_options=FAST_COMPILE)(key(0), *args(z_txt,
                                                                                        ids)))
  params = randomize_zero_kernels(params["params"], scale=0.5)
  assert ("text_pool" in params) == text_pool_cond
  out_proj = params["layers"]["mixer"]["out_proj"]
  params["layers"]["mixer"]["out_proj"] = jax.tree.map(jnp.zeros_like, out_proj)
  apply = jax.jit(lambda zt, i: den.apply({"params": params}, *args(zt, i))[0],
                  compiler_options=FAST_COMPILE)
  base = apply(z_txt, ids)
  other_word = float(jnp.max(jnp.abs(apply(z_txt.at[0, 1].set(0.0), ids.at[0, 1].set(7))
                                     - base)))
  reversed_text = float(jnp.max(jnp.abs(apply(z_txt[:, ::-1], ids[:, ::-1]) - base)))
  if text_pool_cond:
    assert other_word > 1e-3
    assert reversed_text < 1e-5
  else:
    assert other_word == 0.0


def test_pooled_caption_is_the_sum_over_revealed_tokens():
  """numpy: the sum of the table's rows of the non-[MASK] ids; an absent caption gives 0."""
  pool = PooledTextEmbedding(VOCAB, 8, TEXT_LEN)
  ids = np.asarray([[3, VOCAB, 7, 3] + [0] * (TEXT_LEN - 4), [VOCAB] * TEXT_LEN], np.int32)
  params = pool.init(key(0), jnp.asarray(ids))
  table = np.asarray(nn.meta.unbox(params)["params"]["embedding"])
  assert table.shape == (VOCAB + 1, 8)
  np.testing.assert_allclose(table.std(), TEXT_LEN ** -0.5, rtol=0.2)
  got = np.asarray(pool.apply(params, jnp.asarray(ids)))
  want0 = 2 * table[3] + table[7] + (TEXT_LEN - 4) * table[0]
  np.testing.assert_allclose(got[0], want0, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[1], np.zeros(8, np.float32))


def test_one_direction_ablation_uses_identity_order_everywhere():
  cfg = tiny_config(n_layers=5, directions=1)
  orders = Denoiser(cfg).layer_orders()
  length = 4 + cfg.n_pad_tokens + cfg.n_image_tokens + cfg.max_text_len
  assert orders.shape == (5, 2, length)
  np.testing.assert_array_equal(orders, np.broadcast_to(np.arange(length), orders.shape))


# ------------------------------------------------------------------------ absorbing log-score


def _log_score_inputs():
  rs = np.random.RandomState(0)
  b, t, v = 3, 5, 7
  raw = rs.randn(b, t, v + 1).astype(np.float32)
  sigma = np.array([1e-3, 0.3, 4.0], np.float32)  # both sides of the expm1 / exp - 1 switch
  ids = rs.randint(0, v + 1, (b, t)).astype(np.int32)
  ids[0, 0] = v  # [MASK]
  current = np.zeros_like(raw, bool)
  np.put_along_axis(current, ids[..., None], True, axis=-1)
  return raw, sigma, ids, v, current


def test_absorbing_log_score_sedd_matches_hand_formula():
  raw, sigma, ids, v, current = _log_score_inputs()
  got = np.asarray(absorbing_log_score(jnp.asarray(raw), jnp.asarray(sigma), jnp.asarray(ids), v,
                                       "sedd"))
  want = (raw.astype(np.float64) - np.log(np.expm1(sigma.astype(np.float64)))[:, None, None]
          - math.log(v))
  assert np.all(got[current] == 0.0)
  np.testing.assert_allclose(got[~current], want[~current], rtol=1e-5, atol=1e-5)


def test_absorbing_log_score_conditional_is_softmax_over_e_sigma_minus_1():
  """At a masked position the scores of the V tokens are p(y) / (e^sigma - 1), p a softmax."""
  raw, sigma, ids, v, current = _log_score_inputs()
  got = np.asarray(absorbing_log_score(jnp.asarray(raw), jnp.asarray(sigma), jnp.asarray(ids), v,
                                       "conditional")).astype(np.float64)
  r64 = raw.astype(np.float64)[..., :v]
  p = np.exp(r64) / np.exp(r64).sum(-1, keepdims=True)
  want = np.log(p) - np.log(np.expm1(sigma.astype(np.float64)))[:, None, None]
  assert np.all(got[current] == 0.0)
  tok_cur = current[..., :v]
  np.testing.assert_allclose(got[..., :v][~tok_cur], want[~tok_cur], rtol=1e-5, atol=1e-5)
  masked = ids == v
  # Ratios over the tokens sum to 1 / (e^sigma - 1): the total reverse rate is analytic.
  total = np.exp(got[..., :v]).sum(-1)
  want_total = np.broadcast_to(1.0 / np.expm1(sigma.astype(np.float64))[:, None], total.shape)
  np.testing.assert_allclose(total[masked], want_total[masked], rtol=1e-5)


def test_score_entropy_with_conditional_scores_is_the_weighted_cross_entropy():
  """With RADD's form the denoising score entropy is dsigma / (e^sigma - 1) * CE (hand formula),
  i.e. the absorbing ELBO: checked at masked positions, 0 at clean ones."""
  raw, sigma, ids, v, _ = _log_score_inputs()
  rs = np.random.RandomState(1)
  x0 = rs.randint(0, v, ids.shape).astype(np.int32)
  x_t = np.where(rs.rand(*ids.shape) < 0.6, v, x0).astype(np.int32)
  dsigma = np.array([2.0, 0.5, 1.5], np.float32)
  log_score = absorbing_log_score(jnp.asarray(raw), jnp.asarray(sigma), jnp.asarray(x_t), v,
                                  "conditional")
  got = np.asarray(se.score_entropy_loss(log_score, jnp.asarray(sigma)[:, None],
                                         jnp.asarray(dsigma)[:, None], jnp.asarray(x_t),
                                         jnp.asarray(x0), se.AbsorbingGraph(v)))
  r64 = raw.astype(np.float64)[..., :v]
  logp = r64 - np.log(np.exp(r64).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, x0[..., None], -1)[..., 0]
  s64 = sigma.astype(np.float64)[:, None]
  want = np.where(x_t == v, dsigma[:, None] / np.expm1(s64) * ce, 0.0)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


def test_text_score_form_is_validated():
  with pytest.raises(ValueError, match="text_score"):
    MDMConfig(text_score="ratio")