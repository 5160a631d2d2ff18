"""Samplers driven by EXACT denoisers of known distributions, checked against closed forms.

Image: data N(m, v) in 1-D. With x_t = a x0 + s eps the exact noise predictor is
eps_hat = s (x - a m) / (a^2 v + s^2), and the probability-flow ODE keeps the standardised
value (x - a m) / sqrt(a^2 v + s^2) constant, so the exact ODE map from t=1 to t_end is affine.

Text: a factorised categorical p0 (one distribution per position). Under the absorbing graph
the exact ratio at a masked position is p_t(y) / p_t(MASK) = e^-sigma / (1 - e^-sigma) p0(y);
under the uniform graph p_t = e^-sigma p0 + (1 - e^-sigma) / V.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax.diffusion import gaussian
from mdm_jax.diffusion import samplers
from mdm_jax.diffusion import score_entropy as se

M, VAR = 1.5, 0.25
LINEAR = gaussian.VPSchedule.linear(beta_min=0.1, beta_max=20.0)
V, L = 4, 3
P0 = np.random.default_rng(0).dirichlet(np.ones(V) * 1.5, size=L)  # (L, V)


def _ab(sched, t):
  t = np.float64(t)
  if sched.kind == "linear":
    log_abar = -(sched.beta_min * t + (sched.beta_max - sched.beta_min) * t**2 / 2)
  else:
    f = lambda u: np.cos((u + sched.s) / (1 + sched.s) * np.pi / 2)**2
    log_abar = np.log(f(t * sched.t_max) / f(0.0))
  return np.exp(0.5 * log_abar), np.sqrt(-np.expm1(log_abar))


def exact_eps_fn(sched):
  def eps_fn(x, t):
    a, s = sched.alpha(t), sched.sigma(t)
    if jnp.ndim(t) == 1:  # per-example times (joint sampler)
      a, s = a.reshape((-1,) + (1,) * (x.ndim - 1)), s.reshape((-1,) + (1,) * (x.ndim - 1))
    return s * (x - a * M) / (a**2 * VAR + s**2)
  return eps_fn


def pf_ode_map(sched, x_T, t_end):
  a1, s1 = _ab(sched, 1.0)
  ae, se_ = _ab(sched, t_end)
  return ae * M + np.sqrt(ae**2 * VAR + se_**2) / np.sqrt(a1**2 * VAR + s1**2) * (x_T - a1 * M)


def tweedie_x0(sched, x, t):
  a, s = _ab(sched, t)
  return M + a * VAR * (x - a * M) / (a**2 * VAR + s**2)


X_T = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2000,)))


def _err(sched, steps, **kw):
  out = samplers.dpm_solver(exact_eps_fn(sched), jnp.asarray(X_T), sched, steps=steps,
                            t_end=1e-3, **kw)
  return float(np.abs(np.asarray(out, np.float64) - pf_ode_map(sched, X_T, 1e-3)).max())


def test_dpm_solver_2_second_order_and_beats_ddim():
  e10, e20 = _err(LINEAR, 10, order=2), _err(LINEAR, 20, order=2)
  ddim20 = _err(LINEAR, 20, order=1)
  assert e20 <= 0.05, e20
  assert e10 / e20 >= 3.0, (e10, e20)
  assert e20 < ddim20 / 3, (e20, ddim20)


def test_dpm_solver_pp_2m_second_order_and_beats_ddim():
  e20, e40 = (_err(LINEAR, n, order=2, multistep=True) for n in (20, 40))
  ddim20 = _err(LINEAR, 20, order=1, multistep=True)
  assert e20 <= 0.05, e20
  assert e20 / e40 >= 3.0, (e20, e40)
  assert e20 < ddim20 / 3, (e20, ddim20)


def test_dpm_solver_cosine_schedule_and_final_denoise():
  cos = gaussian.VPSchedule.cosine()
  assert _err(cos, 20, order=2) <= 0.05
  out = samplers.dpm_solver(exact_eps_fn(LINEAR), jnp.asarray(X_T), LINEAR, steps=20,
                            t_end=1e-2, denoise_final=True)
  want = tweedie_x0(LINEAR, pf_ode_map(LINEAR, X_T, 1e-2), 1e-2)
  assert np.abs(np.asarray(out) - want).max() <= 0.05
  with pytest.raises(ValueError, match="order"):
    samplers.dpm_solver(exact_eps_fn(LINEAR), jnp.asarray(X_T), LINEAR, order=3)


def test_ddpm_ancestral_reproduces_gaussian():
  x_T = jax.random.normal(jax.random.PRNGKey(1), (8000,))
  out = np.asarray(samplers.ddpm_sample(exact_eps_fn(LINEAR), x_T, LINEAR,
                                        jax.random.PRNGKey(2), steps=1000))
  # sampling s.e.: mean 0.5/sqrt(8000) ~ 0.006, std ~ 0.004
  assert abs(out.mean() - M) < 0.025, out.mean()
  assert abs(out.std() - np.sqrt(VAR)) < 0.02, out.std()


def test_cfg_combines_pytrees():
  cond = (jnp.array([1.0, 2.0]), jnp.array([[0.5]]))
  uncond = (jnp.array([0.0, 4.0]), jnp.array([[1.5]]))
  eps, ls = samplers.cfg(cond, uncond, 2.0)
  np.testing.assert_allclose(np.asarray(eps), [3.0, -2.0])
  np.testing.assert_allclose(np.asarray(ls), [[-1.5]])


# --------------------------------------------------------------------------------- text


def absorbing_log_score(mask_entry=0.0):
  """Exact log-scores; ``mask_entry`` is put at the current token (MASK) of masked rows."""
  log_p0 = jnp.log(jnp.asarray(P0, jnp.float32))  # (L, V)

  def fn(x, sigma):
    sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))[..., None]
    masked = (x == V)[..., None]
    tok = -jnp.log(jnp.expm1(sigma)) + log_p0  # (b, L, V)
    full = jnp.concatenate([tok, jnp.full(tok.shape[:-1] + (1,), mask_entry)], -1)
    return jnp.where(masked, full, 0.0)
  return fn


def uniform_log_score(x, sigma):
  sigma = sigma.reshape((-1, 1, 1))
  p_t = jnp.exp(-sigma) * jnp.asarray(P0, jnp.float32) - jnp.expm1(-sigma) / V  # (b, L, V)
  log_p = jnp.log(p_t)
  return log_p - jnp.take_along_axis(log_p, x[..., None], -1)


def _marginals_ok(out, atol=0.03):
  out = np.asarray(out)
  for pos in range(L):
    freq = np.bincount(out[:, pos], minlength=V + 1) / out.shape[0]
    assert freq[V:].sum() == 0, "a [MASK] survived"
    np.testing.assert_allclose(freq[:V], P0[pos], atol=atol)


@pytest.mark.parametrize("method", ["analytic", "euler"])
def test_sedd_absorbing_reproduces_marginals(method):
  graph, noise = se.AbsorbingGraph(V), se.LogLinearNoise()
  # A raw network output need not zero the current token's log-score: the sampler fixes it.
  log_score_fn = absorbing_log_score(mask_entry=5.0 if method == "analytic" else 0.0)
  fn = jax.jit(lambda key, denoise: samplers.sedd_sample(
      log_score_fn, graph, noise, (4000, L), key, steps=16, method=method, denoise=denoise),
               static_argnums=1)
  _marginals_ok(fn(jax.random.PRNGKey(3), True))
  # Exact reverse steps leave (almost) no mask at t_end = 1e-5 even before the final denoise.
  assert float((fn(jax.random.PRNGKey(4), False) == V).mean()) < 0.01


def test_sedd_uniform_analytic_reproduces_marginals():
  graph, noise = se.UniformGraph(V), se.GeometricNoise(1e-4, 20.0)
  out = jax.jit(lambda key: samplers.sedd_sample(uniform_log_score, graph, noise, (4000, L), key,
                                                 steps=32, method="analytic"))(
                                                     jax.random.PRNGKey(4))
  _marginals_ok(out)


def test_sedd_clean_mask_held():
  graph, noise = se.AbsorbingGraph(V), se.LogLinearNoise()
  b = 64
  clean_mask = jnp.asarray(np.random.default_rng(5).uniform(size=(b, L)) < 0.4)
  clean_tokens = jnp.asarray(np.random.default_rng(6).integers(0, V, size=(b, L)))
  seen = []

  def log_score_fn(x, sigma):
    jax.debug.callback(lambda a: seen.append(np.asarray(a)), x, ordered=True)
    return absorbing_log_score()(x, sigma)

  out = jax.jit(lambda key: samplers.sedd_sample(
      log_score_fn, graph, noise, (b, L), key, steps=5, method="analytic", clean_mask=clean_mask,
      clean_tokens=clean_tokens))(jax.random.PRNGKey(7))
  m = np.asarray(clean_mask)
  np.testing.assert_array_equal(np.asarray(out)[m], np.asarray(clean_tokens)[m])
  assert len(seen) == 6  # 5 steps + the denoising call, each saw the clean tokens
  for x in seen:
    np.testing.assert_array_equal(x[m], np.asarray(clean_tokens)[m])
  assert np.all(np.asarray(out) < V)
  with pytest.raises(ValueError, match="together"):
    samplers.sedd_sample(log_score_fn, graph, noise, (b, L), jax.random.PRNGKey(7), steps=2,
                         clean_mask=clean_mask)


def test_temper_tokens_matches_power_formula():
  w = np.array([[0.1, 0.3, 0.0, 0.2], [0.05, 0.05, 0.4, 0.0]], np.float32)
  for temperature in (1.0, 0.5, 2.0):
    want = w ** (1 / temperature)
    want = want / want.sum(-1, keepdims=True) * w.sum(-1, keepdims=True)
    got = np.asarray(samplers.temper_tokens(jnp.asarray(w), temperature))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  greedy = np.asarray(samplers.temper_tokens(jnp.asarray(w), 0.0))
  np.testing.assert_allclose(greedy, [[0, 0.6, 0, 0], [0, 0, 0.5, 0]], atol=1e-7)


def _tempered(temperature):
  """The marginals the samplers must reproduce at ``temperature``: P0^(1/T), renormalised."""
  if temperature == 0:
    return np.eye(V)[P0.argmax(-1)]
  p = P0 ** (1 / temperature)
  return p / p.sum(-1, keepdims=True)


def _sample_text(method, temperature, key, b=4000):
  graph, noise = se.AbsorbingGraph(V), se.LogLinearNoise()
  if method == "markov":
    logits = lambda x, sigma: jnp.broadcast_to(jnp.log(jnp.asarray(P0, jnp.float32)),
                                               x.shape + (V,))
    return samplers.markov_sample(logits, graph, noise, (b, L), key, steps=16,
                                  temperature=temperature)
  return samplers.sedd_sample(absorbing_log_score(), graph, noise, (b, L), key, steps=16,
                              method=method, temperature=temperature)


@pytest.mark.parametrize("method", ["analytic", "euler", "markov"])
@pytest.mark.parametrize("temperature", [0.5, 0.0])
def test_text_temperature_reshapes_the_token_choice(method, temperature):
  """At temperature T the exact model's samples follow P0^(1/T) (independent positions), and
  T = 0 gives the argmax at every position: the reveal timing is left alone."""
  out = np.asarray(jax.jit(lambda key: _sample_text(method, temperature, key))(
      jax.random.PRNGKey(11)))
  want = _tempered(temperature)
  for pos in range(L):
    freq = np.bincount(out[:, pos], minlength=V + 1) / out.shape[0]
    assert freq[V:].sum() == 0, "a [MASK] survived"
    np.testing.assert_allclose(freq[:V], want[pos], atol=0.03)


def test_text_temperature_is_validated():
  with pytest.raises(ValueError, match=">= 0"):
    _sample_text("analytic", -1.0, jax.random.PRNGKey(0), b=2)
  with pytest.raises(ValueError, match="absorbing graph only"):
    samplers.sedd_sample(uniform_log_score, se.UniformGraph(V), se.GeometricNoise(), (2, L),
                         jax.random.PRNGKey(0), steps=2, method="analytic", temperature=0.0)


# -------------------------------------------------------------------------------- joint

B_JOINT = 2500
GRAPH, NOISE = se.AbsorbingGraph(V), se.LogLinearNoise()


def _joint_model(record=None):
  eps_fn, score_fn = exact_eps_fn(LINEAR), absorbing_log_score()

  def model_fn(z, t_img, tokens, t_txt):
    if record is not None:
      jax.debug.callback(lambda a, b: record.append((np.asarray(a), np.asarray(b))), t_img[:1],
                         t_txt[:1], ordered=True)
    return eps_fn(z, t_img), score_fn(tokens, NOISE(t_txt)[0])
  return model_fn


def _joint(model_fn, z_T, tokens_T, **kw):
  return jax.jit(lambda z_T, tokens_T: samplers.joint_sample(
      model_fn, z_T, tokens_T, LINEAR, GRAPH, NOISE, jax.random.PRNGKey(8), **kw))(z_T, tokens_T)


def test_joint_generates_both_modalities():
  z_T = jax.random.normal(jax.random.PRNGKey(9), (B_JOINT, 2))
  tokens_T = GRAPH.sample_limit(None, (B_JOINT, L))
  rec = []
  z, tokens = _joint(_joint_model(rec), z_T, tokens_T, steps=20)
  want = tweedie_x0(LINEAR, pf_ode_map(LINEAR, np.asarray(z_T), 1e-3), 1e-3)
  assert np.abs(np.asarray(z) - want).max() <= 0.05
  _marginals_ok(tokens)
  assert len(rec) == 21  # one call per step for both modalities, plus the final denoise
  np.testing.assert_allclose([r[0][0] for r in rec], [r[1][0] for r in rec])  # shared grid
  assert rec[0][0][0] == 1.0 and abs(rec[-1][0][0] - 1e-3) < 1e-7


def test_joint_holds_a_clean_modality():
  rng = np.random.default_rng(10)
  z_clean = jnp.asarray(rng.normal(size=(B_JOINT, 2)), jnp.float32)
  tokens_T = GRAPH.sample_limit(None, (B_JOINT, L))
  rec = []
  z, tokens = _joint(_joint_model(rec), z_clean, tokens_T, steps=12, image_clean=True)
  np.testing.assert_array_equal(np.asarray(z), np.asarray(z_clean))
  assert all(np.all(r[0] == 0) for r in rec) and not np.all(rec[0][1] == 0)
  _marginals_ok(tokens)

  clean_tokens = jnp.asarray(rng.integers(0, V, size=(64, L)))
  z_T = jax.random.normal(jax.random.PRNGKey(11), (64, 2))
  rec = []
  z, tokens = _joint(_joint_model(rec), z_T, clean_tokens, steps=20, text_clean=True)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(clean_tokens))
  assert all(np.all(r[1] == 0) for r in rec)
  want = tweedie_x0(LINEAR, pf_ode_map(LINEAR, np.asarray(z_T), 1e-3), 1e-3)
  assert np.abs(np.asarray(z) - want).max() <= 0.05


def test_joint_dpm2_is_singlestep_dpm_solver_2():
  """The joint sampler's DPM-Solver-2 takes the same steps as the standalone solver (itself
  checked against the exact ODE map above): two calls per step, the second at the lambda
  midpoint, plus the final denoising call."""
  z_T = jax.random.normal(jax.random.PRNGKey(14), (256, 2))
  clean_tokens = jnp.zeros((256, L), jnp.int32)
  rec = []
  z, _ = _joint(_joint_model(rec), z_T, clean_tokens, steps=20, image_solver="dpm2",
                text_clean=True)
  assert len(rec) == 2 * 20 + 1
  eps_fn = exact_eps_fn(LINEAR)
  want = samplers.dpm_solver(eps_fn, z_T, LINEAR,
                             steps=20, order=2, denoise_final=True)
  np.testing.assert_allclose(np.asarray(z), np.asarray(want), atol=1e-5)
  exact = tweedie_x0(LINEAR, pf_ode_map(LINEAR, np.asarray(z_T), 1e-3), 1e-3)
  assert np.abs(np.asarray(z) - exact).max() <= 0.05


def test_joint_inpainting_and_infilling():
  b = 64
  z_T = jax.random.normal(jax.random.PRNGKey(12), (b, 2))
  known = jnp.full((b, 2), 7.0)
  image_mask = jnp.array([True, False])  # dim 0 known, dim 1 generated
  text_mask = jnp.zeros((b, L), bool).at[:, 0].set(True)
  text_known = jnp.full((b, L), 3)
  z, tokens = _joint(_joint_model(), z_T, GRAPH.sample_limit(None, (b, L)), steps=20,
                     image_mask=jnp.broadcast_to(image_mask, (b, 2)), image_known=known,
                     text_mask=text_mask, text_known=text_known)
  np.testing.assert_array_equal(np.asarray(z)[:, 0], 7.0)
  np.testing.assert_array_equal(np.asarray(tokens)[:, 0], 3)
  # the exact eps is per-element, so the generated dim follows the unconditional ODE map
  want = tweedie_x0(LINEAR, pf_ode_map(LINEAR, np.asarray(z_T)[:, 1], 1e-3), 1e-3)
  assert np.abs(np.asarray(z)[:, 1] - want).max() <= 0.05
  assert np.all(np.asarray(tokens) < V)


def test_joint_markov_ablation_path():
  """DDPM ancestral images + D3PM text, the model's text output read as x0 logits."""
  log_p0 = jnp.log(jnp.asarray(P0, jnp.float32))

  def model_fn(z, t_img, tokens, t_txt):
    return exact_eps_fn(LINEAR)(z, t_img), jnp.broadcast_to(log_p0, tokens.shape + (V,))

  z_T = jax.random.normal(jax.random.PRNGKey(13), (B_JOINT, 1))
  z, tokens = _joint(model_fn, z_T, GRAPH.sample_limit(None, (B_JOINT, L)), steps=50,
                     image_solver="ddpm", text_method="markov", grid="linear")
  assert abs(float(z.mean()) - M) < 0.05
  _marginals_ok(tokens)
  with pytest.raises(ValueError, match="image_solver"):
    _joint(model_fn, z_T, GRAPH.sample_limit(None, (B_JOINT, L)), image_solver="heun")


@pytest.mark.parametrize("text_method", ["analytic", "markov"])
def test_joint_greedy_text_takes_the_argmax_everywhere(text_method):
  """text_temperature reaches the joint sampler's text steps (greedy: P0's argmax per position);
  the image is held clean so only the text path runs."""
  b = 64
  z_T = jnp.zeros((b, 2))
  tokens_T = GRAPH.sample_limit(None, (b, L))
  model_fn = _joint_model()
  if text_method == "markov":
    model_fn = lambda z, ti, x, tt: (z, jnp.broadcast_to(
        jnp.log(jnp.asarray(P0, jnp.float32)), x.shape + (V,)))
  _, tokens = _joint(model_fn, z_T, tokens_T, steps=8, image_clean=True, text_method=text_method,
                     text_temperature=0.0)
  np.testing.assert_array_equal(np.asarray(tokens), np.broadcast_to(P0.argmax(-1), (b, L)))
