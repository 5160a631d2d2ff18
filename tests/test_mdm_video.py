"""Clips through the MDM network: a one-frame model is exactly the image model main had before
clips (frozen here), a clip model runs forward and backward, and each layer scans the clip in
its 3-D scan order.

Compile-bound like test_mdm.py: tiny dimensions, ``unsafe_rbg`` keys and ``FAST_COMPILE``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.models.mdm import MDM, Denoiser, MDMConfig
from tiny_mdm import (FAST_COMPILE, NUM_CLASSES, VOCAB, key, only_layer, tiny_config,
                      token_dependencies)

# ---------------------------------------------------------------- the image model's oracle
# Captured from main's model before video reached it (commit 3c3fce3, whose MDM had no frames):
# ``param_shapes(init(tiny_config()))`` and ``image_forward_summary`` of that model with
# ``deterministic_params``. A one-frame model must keep both: the same tree loads today's
# checkpoints, the same numbers mean the same network.
MAIN_PARAM_SHAPES = {
    "denoiser/class_embed/embedding": (11, 32),
    "denoiser/eps_head/bias": (4,),
    "denoiser/eps_head/kernel": (32, 4),
    "denoiser/final_norm/scale": (32,),
    "denoiser/image_pos": (16, 32),
    "denoiser/latent_in/bias": (32,),
    "denoiser/latent_in/kernel": (4, 32),
    "denoiser/layers/adaln/bias": (2, 96),
    "denoiser/layers/adaln/kernel": (2, 32, 96),
    "denoiser/layers/mixer/A_log": (2, 4),
    "denoiser/layers/mixer/D": (2, 4),
    "denoiser/layers/mixer/conv_bias": (2, 80),
    "denoiser/layers/mixer/conv_kernel": (2, 4, 80),
    "denoiser/layers/mixer/dt_bias": (2, 4),
    "denoiser/layers/mixer/in_proj/kernel": (2, 32, 148),
    "denoiser/layers/mixer/norm/scale": (2, 64),
    "denoiser/layers/mixer/out_proj/kernel": (2, 64, 32),
    "denoiser/layers/mixer_norm/scale": (2, 32),
    "denoiser/modality_embed": (2, 32),
    "denoiser/pad_tokens": (2, 32),
    "denoiser/score_head/bias": (41,),
    "denoiser/score_head/kernel": (32, 41),
    "denoiser/task_embed/embedding": (6, 32),
    "denoiser/text_id_embed/embedding": (41, 32),
    "denoiser/text_pool/embedding": (41, 32),
    "denoiser/text_pos": (8, 32),
    "denoiser/time_embed_img/in/bias": (32,),
    "denoiser/time_embed_img/in/kernel": (32, 32),
    "denoiser/time_embed_img/out/bias": (32,),
    "denoiser/time_embed_img/out/kernel": (32, 32),
    "denoiser/time_embed_txt/in/bias": (32,),
    "denoiser/time_embed_txt/in/kernel": (32, 32),
    "denoiser/time_embed_txt/out/bias": (32,),
    "denoiser/time_embed_txt/out/kernel": (32, 32),
    "vae/decoder/down_0/bias": (32,),
    "vae/decoder/down_0/kernel": (64, 32),
    "vae/decoder/norm_0/scale": (32,),
    "vae/decoder/norm_out/scale": (32,),
    "vae/decoder/up_0/bias": (64,),
    "vae/decoder/up_0/kernel": (32, 64),
    "vae/encoder/down_0/bias": (32,),
    "vae/encoder/down_0/kernel": (64, 32),
    "vae/encoder/norm_0/scale": (32,),
    "vae/encoder/norm_out/scale": (32,),
    "vae/encoder/up_0/bias": (64,),
    "vae/encoder/up_0/kernel": (32, 64),
    "vae/latent_in/bias": (32,),
    "vae/latent_in/kernel": (4, 32),
    "vae/modality_embed": (2, 32),
    "vae/patch_in/bias": (32,),
    "vae/patch_in/kernel": (4, 32),
    "vae/patch_out/bias": (4,),
    "vae/patch_out/kernel": (32, 4),
    "vae/to_gaussian/bias": (8,),
    "vae/to_gaussian/kernel": (32, 8),
    "vae/token_embed/embedding": (41, 32),
    "vae/vocab_out/bias": (40,),
    "vae/vocab_out/kernel": (32, 40),
}
MAIN_FORWARD_SUMMARY = np.array([
    -0.132713422, -0.236981377, -0.128202364, -0.231853828, -0.158389211, -0.265128404,
    -0.106586218, -0.206012532, 0.357071251, 0.108769655, 0.35205847, 0.107224047, 0.366877139,
    0.120282263, 0.333614975, 0.0899204612, 0.279406577, -0.223020375, 0.148118436, -0.311623186,
    0.227999449, -0.340451926, -0.115203686, -0.231586099, 0.00560823083, -0.0570984557,
    -0.141036481, 0.0547244698, 0.09151797, -0.00702158362, -0.318611115, 0.0793130249,
    -3.58049703, -3.39366984, -3.81497478, -4.13671827, -3.96393299, -3.3673315, -3.69372344,
    -3.75365877, -4.07715893, -3.8519485, -2.11066818, -2.03393912, -2.50204444, -2.79308152,
    -2.44229198, -1.97331715, 0, -2.21691227, -2.73821998, -2.32254863, 6.17158121, 7.29512253,
    -1885.31399,
])


def param_shapes(params) -> dict[str, tuple[int, ...]]:
  """{'/'-joined path: shape} of a parameter tree."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path): tuple(x.shape) for path, x in flat}


def deterministic_params(params):
  """Every leaf replaced by numpy's seeded normals (leaf i in flatten order: seed i), so the
  values depend on the tree alone, not on the initialisers or jax's random bits."""
  flat, tree = jax.tree_util.tree_flatten(params)
  return jax.tree_util.tree_unflatten(tree, [
      jnp.asarray(0.2 * np.random.RandomState(i).randn(*x.shape), jnp.float32)
      for i, x in enumerate(flat)])


def image_inputs():
  rs = np.random.RandomState(0)
  images = jnp.asarray(rs.uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32))
  ids = jnp.asarray(rs.randint(0, VOCAB, (2, 8)).astype(np.int32))
  return images, ids


def image_forward_summary(model, variables, images, ids) -> np.ndarray:
  """VAE reconstruction, eps and text log-scores of a denoising call with distinct times,
  classes and tasks per sample, summarised in 55 numbers (float64)."""

  def fwd(m):
    mu, _ = m.encode_image(images)
    ids_t = ids.at[:, ::2].set(VOCAB)  # half the text masked
    eps, log_score = m.denoise(mu * m.latent_scale()[0], jnp.array([0.3, 0.8]), ids_t,
                               jnp.array([0.5, 0.2]), jnp.array([0.7, 0.2]),
                               jnp.array([3, NUM_CLASSES]), jnp.array([0, 2]))
    return m.decode_image(mu), eps, log_score

  recon, eps, log_score = jax.jit(lambda v: model.apply(v, method=fwd),
                                  compiler_options=FAST_COMPILE)(variables)
  recon, eps, log_score = (np.asarray(x, np.float64) for x in (recon, eps, log_score))
  return np.concatenate([recon[0, :2, :, 0].ravel(), eps[:, :2].ravel(),
                         log_score[:, :2, :5].ravel(),
                         [np.sum(recon ** 2), np.sum(eps ** 2), np.sum(log_score)]])


def abstract_params(cfg: MDMConfig, visual_shape):
  """The parameter tree of ``MDM(cfg)`` initialised on a (1, ...) batch of ``visual_shape``
  (images or clips), as ShapeDtypeStructs: no compile."""
  visual = jax.ShapeDtypeStruct((1,) + tuple(visual_shape[1:]), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, cfg.max_text_len), jnp.int32)
  return nn.meta.unbox(jax.eval_shape(MDM(cfg).init, key(0), visual, ids))["params"]


def deterministic_variables(cfg, visual_shape):
  return {"params": deterministic_params(abstract_params(cfg, visual_shape)),
          "latent_stats": {"vae": {"std": jnp.ones((2,), jnp.float32)}}}


# ----------------------------------------------------------------------------- one frame


def test_one_frame_model_is_the_image_model_of_main():
  """frames=1 (explicitly, with tubelet 1) has main's parameter tree and main's outputs on the
  same parameter values; so has time_orders=False, which changes nothing for one frame. A
  one-frame clip (b, 1, H, W, C) is encoded and decoded exactly as its image."""
  images, ids = image_inputs()
  cfg = tiny_config(frames=1, tubelet=1)
  for c in (cfg, tiny_config(frames=1, time_orders=False)):
    assert param_shapes(abstract_params(c, images.shape)) == MAIN_PARAM_SHAPES
    np.testing.assert_array_equal(Denoiser(c).layer_orders(), Denoiser(cfg).layer_orders())
  model = MDM(cfg)
  variables = deterministic_variables(cfg, images.shape)
  np.testing.assert_allclose(image_forward_summary(model, variables, images, ids),
                             MAIN_FORWARD_SUMMARY, rtol=1e-4, atol=1e-5)

  def vae(m):
    mu, log_sigma = m.encode_image(images)
    mu_clip, log_sigma_clip = m.encode_clip(images[:, None])
    return mu, log_sigma, mu_clip, log_sigma_clip, m.decode_image(mu), m.decode_clip(mu)

  mu, log_sigma, mu_clip, log_sigma_clip, rec, rec_clip = jax.jit(
      lambda v: model.apply(v, method=vae), compiler_options=FAST_COMPILE)(variables)
  np.testing.assert_array_equal(mu_clip, mu)
  np.testing.assert_array_equal(log_sigma_clip, log_sigma)
  np.testing.assert_array_equal(rec_clip, rec[:, None])


# ----------------------------------------------------------------------------- clips


def clip_inputs(frames, batch=2):
  rs = np.random.RandomState(1)
  clips = jnp.asarray(rs.uniform(-1, 1, (batch, frames, 8, 8, 1)).astype(np.float32))
  ids = jnp.asarray(rs.randint(0, VOCAB, (batch, 8)).astype(np.int32))
  return clips, ids


def test_clip_model_runs_forward_and_backward():
  """frames=4: the tree is the image model's plus ``frame_pos`` (4, d) (an image checkpoint
  warm-starts it); the VAE encodes and decodes every frame as an image; the network's outputs
  have the clip's shapes, and the gradients are finite and reach every frame's position."""
  frames = 4
  cfg = tiny_config(frames=frames)
  model = MDM(cfg)
  clips, ids = clip_inputs(frames)
  assert param_shapes(abstract_params(cfg, clips.shape)) == {
      **MAIN_PARAM_SHAPES, "denoiser/frame_pos": (frames, 32)}
  frame_pos = jax.jit(lambda k: model.init(k, clips, ids)["params"]["denoiser"]["frame_pos"],
                      compiler_options=FAST_COMPILE)(key(0))
  np.testing.assert_array_equal(nn.meta.unbox(frame_pos), 0.0)
  variables = deterministic_variables(cfg, clips.shape)
  params, stats = variables["params"], variables["latent_stats"]

  n = cfg.n_frame_tokens

  def fwd(m):
    mu, _ = m.encode_clip(clips)
    frame_mu = [m.encode_image(clips[:, t])[0] for t in range(frames)]
    frame_rec = [m.decode_image(mu[:, t * n:(t + 1) * n]) for t in range(frames)]
    return m.decode_clip(mu), mu, frame_rec, frame_mu

  @jax.jit(compiler_options=FAST_COMPILE)
  def run(p):
    v = {"params": p, "latent_stats": stats}
    outputs = model.apply(v, clips, ids)
    loss = lambda q: sum(jnp.sum(x ** 2) for x in model.apply({**v, "params": q}, clips, ids))
    return outputs, jax.grad(loss)(p), model.apply(v, method=fwd)

  (recon, logits, eps, log_score), grads, (rec, mu, frame_rec, frame_mu) = run(params)
  assert recon.shape == (2, frames, 8, 8, 1)
  assert logits.shape == (2, 8, VOCAB)
  assert eps.shape == (2, frames * n, cfg.latent_dim)
  assert log_score.shape == (2, 8, VOCAB + 1)
  for x in (recon, logits, eps, log_score):
    assert np.all(np.isfinite(x))
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), path
  frame_grad = np.abs(np.asarray(grads["denoiser"]["frame_pos"])).sum(axis=1)
  assert np.all(frame_grad > 0), frame_grad
  # The VAE is per token: a clip's tokens are its frames' image tokens, time-major.
  np.testing.assert_allclose(mu, jnp.concatenate(frame_mu, axis=1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(rec, jnp.stack(frame_rec, axis=1), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------- the 3-D scan schedule


def scan_rank(layer: int, period: int, frames: int, gh: int, gw: int, n_txt: int) -> np.ndarray:
  """Position in layer ``layer``'s scan of each canonical content token (the time-major clip
  tokens (t, r, c), then the text), written out by hand: clip order ``layer mod period`` (0
  frame-major row-major, 2 frame-major column-major, 4 time-major: each grid position through
  the frames; odd orders the exact reversal of the even one before), text forward on even
  layers, reversed and scanned before the clip on odd ones."""
  t, r, c = np.meshgrid(np.arange(frames), np.arange(gh), np.arange(gw), indexing="ij")
  n = frames * gh * gw
  order = layer % period
  rank = {0: t * gh * gw + r * gw + c, 2: t * gh * gw + c * gh + r,
          4: (r * gw + c) * frames + t}[order - order % 2].reshape(-1)
  if order % 2:
    rank = n - 1 - rank
  text = np.arange(n_txt)
  if layer % 2:  # reversed text, scanned first
    return np.concatenate([rank + n_txt, n_txt - 1 - text])
  return np.concatenate([rank, n + text])


@pytest.mark.parametrize("time_orders", [True, False])
def test_each_layer_scans_the_clip_in_its_scheduled_order(time_orders):
  """The layout's per-layer permutations are the hand-written ranks' sorting: period 6 with
  the time-major orders, 4 without (the frame-by-frame ablation), over 13 layers."""
  frames, n_txt = 3, 3
  cfg = tiny_config(image_size=6, max_text_len=n_txt, frames=frames, n_layers=13,
                    time_orders=time_orders)
  gh, gw = cfg.grid
  n_prefix = cfg.layout().n_prefix
  orders = Denoiser(cfg).layer_orders()
  period = 6 if time_orders else 4
  for layer in range(cfg.n_layers):
    rank = scan_rank(layer, period, frames, gh, gw, n_txt)
    want = np.concatenate([np.arange(n_prefix), n_prefix + np.argsort(rank)])
    np.testing.assert_array_equal(orders[layer, 0], want, err_msg=f"layer {layer}")
    np.testing.assert_array_equal(orders[layer, 1][orders[layer, 0]], np.arange(len(want)))
  distinct = {orders[layer, 0].tobytes() for layer in range(cfg.n_layers)}
  assert len(distinct) == period


def test_denoiser_layers_mix_frames_in_their_scan_orders():
  """Keep only layer l's mixer (zero the other layers' out_proj): the output at content token
  k then depends on the input at token j iff j comes no later than k in layer l's scan (the
  hand-written ``scan_rank``), for the 6 clip orders of layers 0..5, time-major ones included:
  in layer 4 a token reads its own position's earlier frames and every earlier position's
  frames, not the later frames of its own position. Row-end tokens make a frame's scanned grid
  2 x 3 and a clip 3 x 2 x 3, so a mix-up of rows, columns or frames shows. With every layer
  on, frame 0's output depends on the last frame's input."""
  frames, n_txt = 3, 3
  cfg = tiny_config(image_size=4, max_text_len=n_txt, frames=frames, n_layers=6,
                    row_end_tokens=True, text_pool_cond=False)  # the pooled caption: own test
  gh, gw = cfg.grid
  n_img, d_lat = cfg.n_image_tokens, cfg.latent_dim
  den = Denoiser(cfg)
  rs = np.random.RandomState(0)
  z_img = jnp.asarray(rs.randn(1, n_img, d_lat).astype(np.float32))
  z_txt = jnp.asarray(rs.randn(1, n_txt, d_lat).astype(np.float32))
  ids = jnp.asarray([[3, VOCAB, 7]], jnp.int32)
  scalars = (jnp.array([0.5]), jnp.array([0.4]), jnp.array([1.0]))
  ints = (jnp.array([2]), jnp.array([4]))

  def apply(p, zi, zt):
    return den.apply(p, zi, scalars[0], zt, scalars[1], scalars[2], ids, *ints)

  shapes = nn.meta.unbox(jax.eval_shape(den.init, key(0), z_img, scalars[0], z_txt, scalars[1],
                                        scalars[2], ids, *ints))["params"]
  params = deterministic_params(shapes)

  dependencies = token_dependencies(apply, z_img, z_txt)   # [out, in]: clip, then text
  full = np.asarray(dependencies(params))
  n_frame = gh * gw
  assert np.all(full[:n_frame, n_img - n_frame:n_img] > 0)  # frame 0 <- frame T-1

  # Real clip tokens among the scanned (frames, gh, gw + 1) tokens, then the text.
  real = np.arange(frames * gh * (gw + 1)).reshape(frames, gh, gw + 1)[..., :gw].reshape(-1)
  for layer in range(cfg.n_layers):
    dep = np.asarray(dependencies(only_layer(params, layer)))
    rank = scan_rank(layer, 6, frames, gh, gw + 1, n_txt)
    rank = np.concatenate([rank[real], rank[frames * gh * (gw + 1):]])
    np.testing.assert_array_equal(dep > 0, rank[None, :] <= rank[:, None],
                                  err_msg=f"layer {layer}: [out, in] dependencies")


# ------------------------------------------------------------------------------ tubelets


def test_tubelet_model_shapes():
  """tubelet=2 on 4 frames: tokens of 2*p*p*c values (the VAE's patch layers), 2 token
  frames (``frame_pos`` (2, d)), clips in and out at full frame rate."""
  cfg = tiny_config(frames=4, tubelet=2)
  assert (cfg.token_frames, cfg.n_image_tokens, cfg.patch_dim) == (2, 32, 8)
  clips, ids = clip_inputs(4)
  shapes = param_shapes(abstract_params(cfg, clips.shape))
  want = {**MAIN_PARAM_SHAPES, "denoiser/frame_pos": (2, 32), "vae/patch_in/kernel": (8, 32),
          "vae/patch_out/kernel": (32, 8), "vae/patch_out/bias": (8,)}
  assert shapes == want
  model = MDM(cfg)
  variables = deterministic_variables(cfg, clips.shape)
  recon, logits, eps, log_score = jax.eval_shape(model.apply, variables, clips, ids)
  assert recon.shape == clips.shape
  assert (logits.shape, eps.shape, log_score.shape) == ((2, 8, VOCAB), (2, 32, cfg.latent_dim),
                                                        (2, 8, VOCAB + 1))
  mu = jax.eval_shape(lambda v: model.apply(v, clips, method=MDM.encode_clip)[0], variables)
  assert mu.shape == (2, 32, cfg.latent_dim)


def test_bad_clip_settings_and_inputs_name_the_fix():
  with pytest.raises(ValueError, match=r"model\.frames 3 must be a multiple of model\.tubelet 2"
                     r".*set tubelet to a divisor of frames"):
    tiny_config(frames=3, tubelet=2)
  with pytest.raises(ValueError, match=r"at least 1"):
    tiny_config(frames=0)
  images, ids = image_inputs()
  clip_cfg = tiny_config(frames=4)
  with pytest.raises(ValueError, match=r"a clip model \(model\.frames=4\) takes clips"):
    abstract_params(clip_cfg, images.shape)
  variables = deterministic_variables(clip_cfg, (1, 4, 8, 8, 1))
  with pytest.raises(ValueError, match=r"z_img has 16 tokens, the model expects 64 \(4 frame"
                     r".*encode_clip"):
    jax.eval_shape(lambda v: MDM(clip_cfg).apply(
        v, jnp.zeros((2, 16, 4)), jnp.zeros((2,)), ids, jnp.zeros((2,)), jnp.ones((2,)),
        jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32), method=MDM.denoise), variables)
  with pytest.raises(ValueError, match=r"clips must be \(batch, 4, 8, 8, 1\)"):
    jax.eval_shape(lambda v: MDM(clip_cfg).apply(v, images[:, None], method=MDM.encode_clip),
                   variables)
  tubelet_cfg = tiny_config(frames=4, tubelet=2)
  variables = deterministic_variables(tubelet_cfg, (1, 4, 8, 8, 1))
  with pytest.raises(ValueError, match=r"tubelet=2 .* use encode_clip"):
    jax.eval_shape(lambda v: MDM(tubelet_cfg).apply(v, images, method=MDM.encode_image),
                   variables)
