"""VP schedules and Gaussian-diffusion conversions against closed forms computed in numpy."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import gaussian

SCHEDULES = [gaussian.VPSchedule.linear(beta_min=0.1, beta_max=20.0),
             gaussian.VPSchedule.cosine(s=0.008)]
T = np.linspace(1e-3, 1.0, 101, dtype=np.float32)


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s.kind)
def test_alpha_sigma_unit_norm_and_lambda_inverse(sched):
  a, s = np.asarray(sched.alpha(T)), np.asarray(sched.sigma(T))
  np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
  lam = np.asarray(sched.lambda_(T))
  np.testing.assert_allclose(lam, np.log(a / s), rtol=1e-4, atol=1e-4)
  assert np.all(np.diff(lam) < 0), "lambda must decrease in t"
  np.testing.assert_allclose(np.asarray(sched.t_of_lambda(lam)), T, rtol=2e-4, atol=2e-5)


def test_linear_schedule_closed_form():
  b0, b1 = 0.1, 20.0
  sched = gaussian.VPSchedule.linear(b0, b1)
  t = T.astype(np.float64)
  log_abar = -(b0 * t + (b1 - b0) * t**2 / 2)
  np.testing.assert_allclose(np.asarray(sched.alpha(T)), np.sqrt(np.exp(log_abar)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sched.sigma(T)), np.sqrt(1 - np.exp(log_abar)),
                             rtol=1e-4)


def test_cosine_schedule_closed_form():
  s, t_max = 0.008, 0.9946
  sched = gaussian.VPSchedule.cosine(s=s)
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2)**2
  abar = f(T.astype(np.float64) * t_max) / f(0.0)
  np.testing.assert_allclose(np.asarray(sched.alpha(T))**2, abar, rtol=1e-4, atol=1e-7)
  assert np.isfinite(float(sched.lambda_(1.0)))


def test_q_sample_and_conversions():
  sched = SCHEDULES[0]
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=(3, 4, 2)).astype(np.float32)
  eps = rng.normal(size=(3, 4, 2)).astype(np.float32)
  t = np.array([0.05, 0.5, 0.9], np.float32)
  log_abar = -(0.1 * t + 19.9 * t**2 / 2)
  a = np.sqrt(np.exp(log_abar))[:, None, None]
  s = np.sqrt(1 - np.exp(log_abar))[:, None, None]
  xt_np = a * x0 + s * eps
  v_np = a * eps - s * x0
  xt = gaussian.q_sample(sched, x0, t, eps)
  np.testing.assert_allclose(np.asarray(xt), xt_np, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gaussian.v_target(sched, x0, eps, t)), v_np, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gaussian.eps_to_x0(sched, eps, xt_np, t)), x0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(gaussian.x0_to_eps(sched, x0, xt_np, t)), eps, atol=1e-4)
  np.testing.assert_allclose(np.asarray(gaussian.v_to_x0(sched, v_np, xt_np, t)), x0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gaussian.v_to_eps(sched, v_np, xt_np, t)), eps, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gaussian.eps_to_v(sched, eps, xt_np, t)), v_np, atol=1e-4)


def test_dsm_loss_targets():
  sched = SCHEDULES[0]
  rng = np.random.default_rng(1)
  x0, eps, pred = (rng.normal(size=(2, 5)).astype(np.float32) for _ in range(3))
  t = np.array([0.2, 0.7], np.float32)
  np.testing.assert_allclose(np.asarray(gaussian.dsm_loss(pred, x0, eps, t, sched)),
                             (pred - eps)**2, rtol=1e-6)
  log_abar = -(0.1 * t + 19.9 * t**2 / 2)
  a, s = np.sqrt(np.exp(log_abar))[:, None], np.sqrt(1 - np.exp(log_abar))[:, None]
  np.testing.assert_allclose(
      np.asarray(gaussian.dsm_loss(pred, x0, eps, t, sched, target="v")),
      (pred - (a * eps - s * x0))**2, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="target"):
    gaussian.dsm_loss(pred, x0, eps, t, sched, target="score")


def test_bad_arguments():
  with pytest.raises(ValueError):
    gaussian.VPSchedule(kind="sigmoid")
  with pytest.raises(ValueError):
    gaussian.VPSchedule.linear(beta_min=5.0, beta_max=1.0)
  with pytest.raises(ValueError, match="batch"):
    gaussian.q_sample(SCHEDULES[0], jnp.zeros((3, 2)), jnp.zeros((2,)), jnp.zeros((3, 2)))
