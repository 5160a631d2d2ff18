"""Tests for mdm_jax.training.optimizer against closed forms and numpy oracles."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdm_jax.training import optimizer as optimizer_lib


def fake_params():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.normal(size=s) + 2.0, jnp.float32)
  return {
      "block_0": {
          "mixer": {"A_log": f(4), "dt_bias": f(4), "D": f(4),
                    "in_proj": {"kernel": f(3, 5), "bias": f(5)},
                    "Dense_0": {"kernel": f(5, 3)}},
          "RMSNorm_0": {"weight": f(3)},
          "ln": {"scale": f(3)},
      },
      "tok": {"embedding": f(7, 3)},
      "head": {"kernel": f(3, 7)},
  }


EXPECTED_DECAY = {
    "block_0/mixer/A_log": False, "block_0/mixer/dt_bias": False,
    "block_0/mixer/D": False, "block_0/mixer/in_proj/kernel": True,
    "block_0/mixer/in_proj/bias": False, "block_0/mixer/Dense_0/kernel": True,
    "block_0/RMSNorm_0/weight": False, "block_0/ln/scale": False,
    "head/kernel": True,
}


def flat(tree):
  return {"/".join(str(k.key) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_weight_decay_mask_by_zero_gradient_update(decay_embeddings):
  lr, wd = 0.1, 0.5
  params = fake_params()
  tx, schedule = optimizer_lib.make_optimizer(
      lr=lr, warmup_steps=0, total_steps=100, weight_decay=wd,
      decay_embeddings=decay_embeddings)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  expected = dict(EXPECTED_DECAY, **{"tok/embedding": decay_embeddings})
  lr0 = float(schedule(0))
  assert lr0 == pytest.approx(lr)
  for name, p in flat(params).items():
    p, q = np.asarray(p), np.asarray(flat(new)[name])
    if expected[name]:
      # Zero gradient: Adam's step is 0, only decoupled decay -lr*wd*p remains.
      np.testing.assert_allclose(q, p - lr0 * wd * p, rtol=1e-6, err_msg=name)
    else:
      np.testing.assert_array_equal(q, p, err_msg=name)


def test_schedule_matches_closed_form():
  lr, w, total, end = 3e-4, 10, 110, 0.1
  schedule = optimizer_lib.make_lr_schedule(
      lr=lr, warmup_steps=w, total_steps=total, end_lr_factor=end)

  def closed_form(t):
    if t < w:
      return lr * t / w
    t = min(t, total)
    e = lr * end
    return e + (lr - e) * 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w)))

  for t in [0, 1, 5, 10, 11, 35, 60, 109, 110, 500]:
    assert float(schedule(t)) == pytest.approx(closed_form(t), rel=1e-5, abs=1e-12)


def test_bad_schedule_arguments():
  with pytest.raises(ValueError, match="warmup_steps < total_steps"):
    optimizer_lib.make_lr_schedule(lr=1.0, warmup_steps=10, total_steps=10)
  with pytest.raises(ValueError, match="grad_accum_steps"):
    optimizer_lib.make_optimizer(
        lr=1.0, warmup_steps=0, total_steps=10, weight_decay=0.0,
        grad_accum_steps=0)


def numpy_adamw(params, grads_per_update, *, lr_fn, b1, b2, eps, wd, clip, mask):
  """Reference AdamW + global-norm clipping, one update per gradient."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, g in enumerate(grads_per_update):
    norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in g.values()))
    c = min(1.0, clip / norm)
    for k in p:
      gk = g[k] * c
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk ** 2
      mhat = m[k] / (1 - b1 ** (t + 1))
      vhat = v[k] / (1 - b2 ** (t + 1))
      p[k] = p[k] - lr_fn(t) * (mhat / (np.sqrt(vhat) + eps) + wd * mask[k] * p[k])
  return p


def test_multisteps_equals_adamw_on_mean_gradient():
  k, n_updates = 3, 2
  kw = dict(lr=0.05, warmup_steps=0, total_steps=4, weight_decay=0.1,
            b1=0.8, b2=0.95, eps=1e-8, grad_clip=0.5)
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  micro = [{n: rng.normal(size=p.shape).astype(np.float32)
            for n, p in params.items()} for _ in range(k * n_updates)]
  tx, schedule = optimizer_lib.make_optimizer(grad_accum_steps=k, **kw)
  state = tx.init(params)
  p = params
  update = jax.jit(tx.update)
  for i, g in enumerate(micro):
    updates, state = update(jax.tree.map(jnp.asarray, g), state, p)
    if (i + 1) % k:
      chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, p))
    p = optax.apply_updates(p, updates)
  mean_grads = [{n: np.mean([micro[u * k + j][n] for j in range(k)], axis=0)
                 for n in params} for u in range(n_updates)]
  expected = numpy_adamw(
      params, mean_grads, lr_fn=lambda t: float(schedule(t)), b1=kw["b1"],
      b2=kw["b2"], eps=kw["eps"], wd=kw["weight_decay"], clip=kw["grad_clip"],
      mask={"w": 1.0, "bias": 0.0})
  for n in params:
    np.testing.assert_allclose(np.asarray(p[n]), expected[n], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_hand_recurrence(warmup):
  decay, steps = 0.9, 6
  rng = np.random.default_rng(2)
  seq = [rng.normal(size=(3,)).astype(np.float32) for _ in range(steps)]
  ema = {"w": jnp.zeros((3,), jnp.float32), "b": jnp.zeros((2,), jnp.bfloat16)}
  e_w = np.zeros(3)
  update = jax.jit(optimizer_lib.ema_update, static_argnums=2)
  for t, x in enumerate(seq):
    params = {"w": jnp.asarray(x), "b": jnp.ones((2,), jnp.bfloat16)}
    ema = update(ema, params, decay, t if warmup else None)
    d = min(decay, (1 + t) / (10 + t)) if warmup else decay
    e_w = d * e_w + (1 - d) * x
  np.testing.assert_allclose(np.asarray(ema["w"]), e_w, rtol=1e-5, atol=1e-6)
  assert ema["b"].dtype == jnp.bfloat16
  # Warm-up: d_0 = 0.1, so the first step moves the average 90% to the params.
  if warmup:
    assert float(optimizer_lib.ema_decay(0, decay)) == pytest.approx(0.1)
    assert float(optimizer_lib.ema_decay(1000, decay)) == pytest.approx(decay)
