"""Samplers: DPM-Solver / DDIM / DDPM for image latents, SEDD and D3PM for text, and both jointly.

All samplers take callables (the network is closed over by the caller) and are jittable with
Python-int step counts; loops are ``lax.fori_loop`` so compile time does not grow with steps.

Image (VP, see ``gaussian``): ``dpm_solver`` integrates the probability-flow ODE from t = 1 to
``t_end`` on a grid uniform in lambda = log(alpha/sigma) (half logSNR):

* order 1: DDIM / DPM-Solver-1, ``x_t = (a_t/a_s) x_s - s_t expm1(h) eps(x_s, s)``;
* order 2 singlestep: DPM-Solver-2 (Lu et al. 2022, r1 = 1/2), two evaluations per step;
* ``multistep=True``, order 2: DPM-Solver++(2M) (Lu et al. 2022b, data prediction), one
  evaluation per step, first step first order.

Text (SEDD, see ``score_entropy``): ``sedd_sample`` runs SEDD's Euler or analytic (Tweedie
tau-leaping) predictor on a uniform t grid from 1 to ``t_end``, then SEDD's final denoising
step. ``markov_sample`` is the D3PM ancestral sampler of the "Markov chain" ablation.

Every loop is built from the same steps: ``image_step`` (one DPM-Solver++(2M), DPM-Solver-2,
DDIM or DDPM step), ``text_step`` (one SEDD predictor or D3PM step) and ``text_denoise`` (the
final step). ``joint_sample`` composes them on one shared grid, one network call a step for
both modalities (the network, closed over by the caller, is the predictor of both).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from mdm_jax.diffusion import gaussian
from mdm_jax.diffusion import markov
from mdm_jax.diffusion import score_entropy as se

SEDD_METHODS = ("euler", "analytic")
JOINT_TEXT_METHODS = SEDD_METHODS + ("markov",)
JOINT_IMAGE_SOLVERS = ("dpm++2m", "dpm2", "ddim", "ddpm")
GRIDS = ("logsnr", "linear")


def cfg(cond_out: Any, uncond_out: Any, w) -> Any:
  """Classifier-free guidance ``(1 + w) cond - w uncond``, leaf-wise over pytrees.

  Applied to eps (or v) it is the usual guided noise prediction. Applied to SEDD log-scores it
  guides the log concrete score, i.e. ratios ``s_cond^(1+w) / s_uncond^w`` (a tilted
  distribution ~ p(x|c)^(1+w) / p(x)^w per transition), as for continuous scores. A tuple
  ``(eps, log_score)`` from a joint model is guided in both parts with the same w.
  """
  return jax.tree.map(lambda c, u: (1.0 + w) * c - w * u, cond_out, uncond_out)


# ------------------------------------------------------------------------------ image steps


def logsnr_time_grid(sched: gaussian.VPSchedule, steps: int, t_end: float,
                     t_start: float = 1.0) -> jnp.ndarray:
  """(steps+1,) times from t_start to t_end, uniform in lambda (half logSNR); endpoints exact."""
  lam = jnp.linspace(sched.lambda_(t_start), sched.lambda_(t_end), steps + 1)
  ts = sched.t_of_lambda(lam)
  return ts.at[0].set(t_start).at[-1].set(t_end)


def lambda_midpoints(sched: gaussian.VPSchedule, ts: jnp.ndarray) -> jnp.ndarray:
  """(len(ts)-1,) times halfway in lambda between consecutive grid times: where singlestep
  DPM-Solver-2 takes its second evaluation."""
  lam = sched.lambda_(ts)
  return sched.t_of_lambda(0.5 * (lam[:-1] + lam[1:]))


def _check_steps(steps: int, t_end: float):
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive Python int, got {steps!r}.")
  if not 0 < t_end < 1:
    raise ValueError(f"t_end must lie in (0, 1), got {t_end}.")


def _ddim_update(sched, x, eps, t, t_next):
  """DPM-Solver-1 (= DDIM): exact for a constant eps over the step."""
  h = sched.lambda_(t_next) - sched.lambda_(t)
  return jnp.exp(sched.log_alpha(t_next) - sched.log_alpha(t)) * x - sched.sigma(
      t_next) * jnp.expm1(h) * eps


def _dpmpp_update(sched, x, x0, t, t_next):
  """DPM-Solver++ first-order update with a data prediction x0 (exact for constant x0)."""
  h = sched.lambda_(t_next) - sched.lambda_(t)
  return sched.sigma(t_next) / sched.sigma(t) * x - sched.alpha(t_next) * jnp.expm1(-h) * x0


def _dpmpp_2m_update(sched, x, x0, x0_prev, h_prev, first, t, t_next):
  """DPM-Solver++(2M): second-order multistep in data prediction; ``first`` -> first order."""
  h = sched.lambda_(t_next) - sched.lambda_(t)
  r = jnp.where(first, 1.0, h_prev / h)
  d = jnp.where(first, x0, (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev)
  return _dpmpp_update(sched, x, d, t, t_next), h


def _ddpm_update(sched, rng, x, eps, t, t_next):
  """Ancestral step: a sample of q(x_s | x_t, x0 = x0_hat) with s = t_next (s = 0 -> mean)."""
  log_a_ts = sched.log_alpha(t) - sched.log_alpha(t_next)   # alpha_{t|s}
  var_ts = -jnp.expm1(2.0 * log_a_ts)                        # sigma_{t|s}^2
  sigma_t = sched.sigma(t)
  mean = jnp.exp(-log_a_ts) * (x - var_ts / sigma_t * eps)
  std = jnp.sqrt(var_ts) * sched.sigma(t_next) / sigma_t
  return mean + std * jax.random.normal(rng, x.shape, x.dtype)


def image_step(solver: str, sched: gaussian.VPSchedule, z, eps, t, t_next, carry, *,
               first=False, key=None, eps_mid_fn: Optional[Callable] = None, t_mid=None):
  """One image step from t to t_next given ``eps`` at (z, t); what every image sampler loops.

  Args:
    solver: "dpm++2m" (DPM-Solver++(2M); ``first``: first order), "dpm2" (singlestep
      DPM-Solver-2: ``eps_mid_fn(u)`` evaluates at the lambda midpoint ``t_mid``), "ddim" or
      "ddpm" (ancestral, with ``key``).
    carry: (x0_prev, h_prev), the multistep history (passed through by the other solvers).
  Returns:
    (z at t_next, the new carry).
  """
  if solver == "dpm++2m":
    x0_prev, h_prev = carry
    x0 = gaussian.eps_to_x0(sched, eps, z, t)
    z, h = _dpmpp_2m_update(sched, z, x0, x0_prev, h_prev, first, t, t_next)
    return z, (x0, h)
  if solver == "dpm2":
    u = _ddim_update(sched, z, eps, t, t_mid)
    return _ddim_update(sched, z, eps_mid_fn(u), t, t_next), carry
  if solver == "ddim":
    return _ddim_update(sched, z, eps, t, t_next), carry
  return _ddpm_update(sched, key, z, eps, t, t_next), carry


def dpm_solver(eps_fn: Callable, x_T: jnp.ndarray, sched: gaussian.VPSchedule, *,
               steps: int = 20, order: int = 2, multistep: bool = False,
               t_end: float = 1e-3, denoise_final: bool = False) -> jnp.ndarray:
  """Solves the probability-flow ODE from t = 1 to t_end with DPM-Solver.

  Args:
    eps_fn: (x (b, ...), t scalar float32 array) -> predicted noise, shape of x.
    x_T: (b, ...) starting latents, N(0, I).
    sched: the VP schedule the model was trained with.
    steps: solver steps on a grid uniform in lambda; an order-2 singlestep step costs 2
      evaluations, a multistep step 1.
    order: 1 (DDIM) or 2. multistep: with order 2, DPM-Solver++(2M) (data prediction).
    t_end: final time (lambda is infinite at t = 0).
    denoise_final: if True, return the one-evaluation x0 prediction at t_end (one extra eval)
      instead of x_{t_end}.
  Returns:
    x at t_end (or its x0 prediction), shape and dtype of x_T.
  """
  _check_steps(steps, t_end)
  if order not in (1, 2):
    raise ValueError(f"order must be 1 or 2, got {order}.")
  x = x_T.astype(jnp.float32)
  ts = logsnr_time_grid(sched, steps, t_end)

  solver = "dpm++2m" if multistep else ("dpm2" if order == 2 else "ddim")
  t_mid = lambda_midpoints(sched, ts)

  def body(i, carry):
    x, history = carry
    t, t_next = ts[i], ts[i + 1]
    return image_step(solver, sched, x, eps_fn(x, t), t, t_next, history,
                      first=(i == 0) | (order == 1), t_mid=t_mid[i],
                      eps_mid_fn=lambda u: eps_fn(u, t_mid[i]))
  x, _ = jax.lax.fori_loop(0, steps, body, (x, (jnp.zeros_like(x), jnp.float32(1.0))))

  if denoise_final:
    t = ts[-1]
    x = gaussian.eps_to_x0(sched, eps_fn(x, t), x, t)
  return x.astype(x_T.dtype)


def ddpm_sample(eps_fn: Callable, x_T: jnp.ndarray, sched: gaussian.VPSchedule,
                rng: jax.Array, *, steps: int = 1000) -> jnp.ndarray:
  """DDPM ancestral sampling on a uniform t grid from 1 to 0 (the Markov-chain ablation).

  Each step draws from the Gaussian posterior q(x_s | x_t, x0_hat) with x0_hat from eps_fn;
  the last step (s = 0) returns its mean, x0_hat. eps_fn as in ``dpm_solver``.
  """
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive Python int, got {steps!r}.")
  ts = jnp.linspace(1.0, 0.0, steps + 1)

  def body(i, x):
    t, t_next = ts[i], ts[i + 1]
    key = jax.random.fold_in(rng, i)
    return image_step("ddpm", sched, x, eps_fn(x, t), t, t_next, (), key=key)[0]

  return jax.lax.fori_loop(0, steps, body, x_T.astype(jnp.float32)).astype(x_T.dtype)


# ------------------------------------------------------------------------------- text steps


def _hold_clean(x: jnp.ndarray, clean_mask, clean_tokens) -> jnp.ndarray:
  """Re-imposes held-clean positions: where(clean_mask, clean_tokens, x)."""
  if (clean_mask is None) != (clean_tokens is None):
    raise ValueError("pass clean_mask and clean_tokens together (or neither).")
  if clean_mask is None:
    return x
  return jnp.where(jnp.asarray(clean_mask, bool), jnp.asarray(clean_tokens, x.dtype), x)


def _scores(graph, x, log_score):
  """exp(log_score) with the current token's ratio fixed to 1 (p_t(x)/p_t(x)), as SEDD's model
  does by zeroing that log-score; imposed here so a raw network output is safe to pass."""
  if log_score.shape != x.shape + (graph.dim,):
    raise ValueError(
        f"log-scores must have shape tokens.shape + (graph.dim,) = {x.shape + (graph.dim,)}, "
        f"got {log_score.shape}.")
  on_x = jax.nn.one_hot(x, graph.dim, dtype=bool)
  return jnp.exp(jnp.where(on_x, 0.0, log_score.astype(jnp.float32)))


def _check_temperature(graph, temperature):
  if not isinstance(temperature, (int, float)) or temperature < 0:
    raise ValueError(f"text temperature must be a Python number >= 0, got {temperature!r}.")
  if temperature != 1.0 and not graph.absorb:
    raise ValueError("a text temperature other than 1 is defined for the absorbing graph only "
                     "(it reshapes which token a [MASK] becomes, not when).")


def temper_tokens(weights: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """Reshapes unnormalised token weights (..., V) >= 0 to ``w^(1/T)``, keeping their total.

  Applied to the token entries of an absorbing step's transition weights, it changes which token
  a [MASK] becomes and leaves the chance that it is revealed now (the [MASK] entry) alone.
  ``temperature`` 1 returns ``weights``; 0 puts the whole mass on the argmax (greedy decoding,
  as VQA benchmarks decode answers).
  """
  if temperature == 1.0:
    return weights
  total = weights.sum(-1, keepdims=True)
  if temperature == 0:
    shaped = jax.nn.one_hot(jnp.argmax(weights, -1), weights.shape[-1], dtype=weights.dtype)
  else:
    logw = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    shaped = jax.nn.softmax(logw / temperature, axis=-1)
  return total * shaped


def _sedd_update(graph, noise, method, rng, x, log_score, t, t_next, temperature=1.0):
  """One SEDD predictor step from t to t_next given log-scores at (x, sigma(t))."""
  score = _scores(graph, x, log_score)
  sigma, dsigma = noise(t)
  if method == "euler":
    rate = (t - t_next) * dsigma * graph.reverse_rate(x, score)
    probs = jax.nn.one_hot(x, graph.dim) + rate  # one Euler (tau-leaping) jump
  else:
    # analytic: Tweedie tau-leaping with exact transitions over [sigma(t_next), sigma(t)].
    dsig = sigma - noise(t_next)[0]
    probs = graph.staggered_score(score, dsig) * graph.transp_transition(x, dsig)
  if graph.absorb and temperature != 1.0:
    probs = jnp.concatenate([temper_tokens(probs[..., :-1], temperature), probs[..., -1:]], -1)
  return se.sample_categorical(rng, probs)


def _sedd_denoise(graph, noise, rng, x, log_score, t, temperature=1.0):
  """SEDD's final denoising step at t: removes all the remaining noise (never returns MASK)."""
  sigma = noise(t)[0]
  score = _scores(graph, x, log_score)
  probs = graph.staggered_score(score, sigma) * graph.transp_transition(x, sigma)
  if graph.absorb:
    probs = temper_tokens(probs[..., :-1], temperature)
  return se.sample_categorical(rng, probs)


def text_step(method: str, graph, noise, key, x, text_out, t, t_next, temperature=1.0,
              last=False):
  """One text step from t to t_next given the network's ``text_out`` at (x, sigma(t)): SEDD's
  predictor ("euler" / "analytic", log-scores) or the D3PM ancestral step ("markov", x0
  logits; ``last`` reveals every remaining mask)."""
  if method == "markov":
    sigma_s = jnp.where(last, 0.0, noise(t_next)[0])
    return markov.absorbing_ancestral_step(key, x, text_out, noise(t)[0], sigma_s, graph,
                                           temperature)
  return _sedd_update(graph, noise, method, key, x, text_out, t, t_next, temperature)


def text_denoise(method: str, graph, noise, key, x, text_out, t, temperature=1.0):
  """The final step at t that removes all the remaining noise (never returns [MASK])."""
  if method == "markov":
    return markov.absorbing_ancestral_step(key, x, text_out, noise(t)[0], 0.0, graph,
                                           temperature)
  return _sedd_denoise(graph, noise, key, x, text_out, t, temperature)


def _check_text_shape(shape, clean_mask, clean_tokens):
  shape = tuple(shape)
  if len(shape) < 1:
    raise ValueError(f"shape must have a leading batch axis, got {shape}.")
  for name, a in (("clean_mask", clean_mask), ("clean_tokens", clean_tokens)):
    if a is not None and jnp.shape(a) != shape:
      raise ValueError(f"{name} has shape {jnp.shape(a)}, expected the token shape {shape}.")
  return shape


def sedd_sample(log_score_fn: Callable, graph: se.Graph, noise, shape, rng: jax.Array, *,
                steps: int, method: str = "euler", denoise: bool = True,
                clean_mask: Optional[jnp.ndarray] = None,
                clean_tokens: Optional[jnp.ndarray] = None,
                t_end: float = 1e-5, temperature: float = 1.0) -> jnp.ndarray:
  """SEDD sampling (SEDD's ``get_pc_sampler``) from the graph's limit distribution.

  Args:
    log_score_fn: (x_t (b, ...) int32, sigma (b,) float32) -> (b, ..., graph.dim) log-scores
      log(p_t(y)/p_t(x_t)) per position. The entry at the current token is overwritten with 0
      (ratio 1, what SEDD's model outputs); for AbsorbingGraph only masked positions are read.
    graph, noise: from ``score_entropy``.
    shape: token shape (b, ...).
    steps: predictor steps on the uniform t grid 1 -> t_end (one evaluation each) plus one
      evaluation for the final denoising step when ``denoise``.
    method: "euler" (first-order reverse-rate jump) or "analytic" (SEDD's AnalyticPredictor).
    denoise: SEDD's final step at t_end that samples every remaining [MASK].
    clean_mask, clean_tokens: optional bool / int arrays of ``shape``; those positions are held
      at clean_tokens (set before every evaluation and in the output): infilling, prompts,
      VQA questions.
    temperature: AbsorbingGraph only: which token a [MASK] becomes is drawn from the model's
      weights to the power 1/temperature (0: the most likely one); see ``temper_tokens``.
  Returns:
    (b, ...) int32 tokens.
  """
  _check_steps(steps, t_end)
  _check_temperature(graph, temperature)
  if method not in SEDD_METHODS:
    raise ValueError(f"method must be one of {SEDD_METHODS}, got {method!r}.")
  shape = _check_text_shape(shape, clean_mask, clean_tokens)
  rng, key = jax.random.split(rng)
  x = _hold_clean(graph.sample_limit(key, shape), clean_mask, clean_tokens)
  ts = jnp.linspace(1.0, t_end, steps + 1)
  sigma_vec = lambda t: jnp.full((shape[0],), noise(t)[0])

  def body(i, x):
    t, t_next = ts[i], ts[i + 1]
    x = text_step(method, graph, noise, jax.random.fold_in(rng, i), x,
                  log_score_fn(x, sigma_vec(t)), t, t_next, temperature)
    return _hold_clean(x, clean_mask, clean_tokens)

  x = jax.lax.fori_loop(0, steps, body, x)
  if denoise:
    t = ts[-1]
    x = text_denoise(method, graph, noise, jax.random.fold_in(rng, steps), x,
                     log_score_fn(x, sigma_vec(t)), t, temperature)
    x = _hold_clean(x, clean_mask, clean_tokens)
  return x


def markov_sample(x0_logits_fn: Callable, graph: se.AbsorbingGraph, noise, shape,
                  rng: jax.Array, *, steps: int, clean_mask: Optional[jnp.ndarray] = None,
                  clean_tokens: Optional[jnp.ndarray] = None,
                  temperature: float = 1.0) -> jnp.ndarray:
  """D3PM ancestral sampling of the absorbing chain (Markov ablation), uniform t grid 1 -> 0.

  Args:
    x0_logits_fn: (x_t (b, ...) int32, sigma (b,) float32) -> (b, ..., V) or (..., V+1) logits
      of p_theta(x0 | x_t).
    graph: AbsorbingGraph. noise: e.g. LogLinearNoise; the last step reveals every mask.
    shape, steps, clean_mask, clean_tokens, temperature: as in ``sedd_sample``.
  Returns:
    (b, ...) int32 tokens, no [MASK].
  """
  _check_temperature(graph, temperature)
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive Python int, got {steps!r}.")
  shape = _check_text_shape(shape, clean_mask, clean_tokens)
  x = _hold_clean(graph.sample_limit(None, shape), clean_mask, clean_tokens)
  ts = jnp.linspace(1.0, 0.0, steps + 1)

  def body(i, x):
    logits = x0_logits_fn(x, jnp.full((shape[0],), noise(ts[i])[0]))
    x = text_step("markov", graph, noise, jax.random.fold_in(rng, i), x, logits, ts[i],
                  ts[i + 1], temperature, last=i == steps - 1)
    return _hold_clean(x, clean_mask, clean_tokens)

  return jax.lax.fori_loop(0, steps, body, x)


# ------------------------------------------------------------------------------------ joint


def joint_sample(model_fn: Callable, z_T: jnp.ndarray, tokens_T: jnp.ndarray,
                 sched: gaussian.VPSchedule, graph: se.Graph, noise, rng: jax.Array, *,
                 steps: int = 20, image_solver: str = "dpm++2m", text_method: str = "analytic",
                 image_clean: bool = False, text_clean: bool = False,
                 image_mask: Optional[jnp.ndarray] = None,
                 image_known: Optional[jnp.ndarray] = None,
                 text_mask: Optional[jnp.ndarray] = None,
                 text_known: Optional[jnp.ndarray] = None,
                 grid: str = "logsnr", t_end: float = 1e-3,
                 denoise: bool = True,
                 text_temperature: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Samples image latents and text tokens together, one network call per step for both.

  Both modalities share one time grid ``ts`` (steps+1 points from 1 to t_end): uniform in the
  image schedule's lambda (``grid="logsnr"``, what DPM-Solver wants) or in t (``"linear"``,
  what SEDD uses). At step i the network sees both modalities at time ts[i] (or 0 for a
  modality held clean); the image takes one solver step and the text one predictor step to
  ts[i+1]. With ``denoise`` a last call at t_end gives the image's x0 prediction and SEDD's
  denoising step (steps + 1 calls in all), so neither output carries leftover noise or masks.

  Args:
    model_fn: (z (b, ...) float32, t_img (b,), tokens (b, L) int32, t_txt (b,)) ->
      (eps like z, text_out (b, L, graph.dim)). text_out are SEDD log-scores, or, for
      ``text_method="markov"``, x0 logits (b, L, V) or (b, L, V+1). Times are t in [0, 1]
      (convert with ``noise(t)`` inside if the network conditions on sigma). Wrap it with
      ``cfg`` for guidance.
    z_T: (b, ...) starting latents: N(0, I) noise; the clean latents if ``image_clean``.
    tokens_T: (b, L) starting tokens: ``graph.sample_limit``; the clean tokens if
      ``text_clean``.
    sched, graph, noise: the two processes (``gaussian.VPSchedule``, ``score_entropy``).
    rng: PRNG key.
    steps: shared grid steps. image_solver: "dpm++2m" (DPM-Solver++(2M), ODE), "dpm2"
      (singlestep DPM-Solver-2: a second call per step at the lambda midpoint, with the text
      held where it is), "ddim" or "ddpm" (ancestral, the Markov ablation).
      text_method: "analytic", "euler" (SEDD) or "markov" (D3PM ancestral; AbsorbingGraph
      only; reveals every mask at the end).
    image_clean, text_clean: hold that whole modality clean (t = 0; returned unchanged):
      captioning / VQA (image clean), text-to-image (text clean).
    image_mask, image_known: inpainting. image_mask (bool, broadcastable to z_T) is True where
      the latent is known; image_known (shape of z_T) holds those clean latents. Before every
      call the known region is replaced by a fresh forward sample q(z_t | known) at the
      current time (the replacement method), and by the clean value in the output.
    text_mask, text_known: infilling / prompts / VQA questions: (b, L) bool and int tokens held
      clean inside a diffused text (as ``sedd_sample``'s clean_mask / clean_tokens).
    grid: "logsnr" or "linear". t_end: last grid time.
    denoise: take the final denoising call (see above); otherwise return the state at t_end.
    text_temperature: as ``sedd_sample``'s temperature (0: greedy tokens, e.g. VQA answers).
  Returns:
    (z_0 (shape and dtype of z_T), tokens (b, L) int32).
  """
  _check_joint(z_T, tokens_T, graph, steps=steps, image_solver=image_solver,
               text_method=text_method, grid=grid, t_end=t_end, image_mask=image_mask,
               image_known=image_known, text_mask=text_mask, text_known=text_known,
               text_temperature=text_temperature)
  b = z_T.shape[0]
  ts = (logsnr_time_grid(sched, steps, t_end) if grid == "logsnr"
        else jnp.linspace(1.0, t_end, steps + 1))
  ts_mid = lambda_midpoints(sched, ts) if image_solver == "dpm2" else None
  zeros = jnp.zeros((b,), jnp.float32)
  t_img_of = lambda t: zeros if image_clean else jnp.full((b,), t)
  t_txt_of = lambda t: zeros if text_clean else jnp.full((b,), t)
  rng_img, rng_txt, rng_known = jax.random.split(rng, 3)
  impose_image = _replacement(sched, None if image_clean else image_mask, image_known)
  hold_text = lambda x: _hold_clean(x, text_mask, text_known)
  z = impose_image(z_T.astype(jnp.float32), ts[0], jax.random.fold_in(rng_known, 0))
  x = tokens_T.astype(jnp.int32) if text_clean else hold_text(tokens_T.astype(jnp.int32))

  def body(i, carry):
    z, x, history = carry
    t, t_next = ts[i], ts[i + 1]
    eps, text_out = model_fn(z, t_img_of(t), x, t_txt_of(t))
    if not image_clean:
      t_mid = None if ts_mid is None else ts_mid[i]
      key_mid = jax.random.fold_in(rng_known, steps + 1 + i)    # keys 0..steps: the grid
      eps_mid_fn = lambda u: model_fn(impose_image(u, t_mid, key_mid), t_img_of(t_mid), x,
                                      t_txt_of(t))[0]
      z, history = image_step(image_solver, sched, z, eps, t, t_next, history, first=i == 0,
                              key=jax.random.fold_in(rng_img, i), eps_mid_fn=eps_mid_fn,
                              t_mid=t_mid)
      z = impose_image(z, t_next, jax.random.fold_in(rng_known, i + 1))
    if not text_clean:
      x = hold_text(text_step(text_method, graph, noise, jax.random.fold_in(rng_txt, i), x,
                              text_out, t, t_next, text_temperature,
                              last=(i == steps - 1) & (not denoise)))
    return z, x, history

  z, x, _ = jax.lax.fori_loop(0, steps, body, (z, x, (jnp.zeros_like(z), jnp.float32(1.0))))
  if denoise:
    t = ts[-1]
    eps, text_out = model_fn(z, t_img_of(t), x, t_txt_of(t))
    if not image_clean:
      z = gaussian.eps_to_x0(sched, eps, z, t)
    if not text_clean:
      x = hold_text(text_denoise(text_method, graph, noise, jax.random.fold_in(rng_txt, steps),
                                 x, text_out, t, text_temperature))
  if image_mask is not None and not image_clean:
    z = jnp.where(jnp.asarray(image_mask, bool), image_known.astype(jnp.float32), z)
  return z.astype(z_T.dtype), x


def _replacement(sched, image_mask, image_known) -> Callable:
  """(z, t, key) -> z with the known region replaced by a fresh forward sample q(z_t | known)
  (identity without a mask): inpainting by the replacement method."""
  if image_mask is None:
    return lambda z, t, key: z

  def impose(z, t, key):
    noisy = gaussian.q_sample(sched, image_known.astype(jnp.float32), t,
                              jax.random.normal(key, z.shape, jnp.float32))
    return jnp.where(jnp.asarray(image_mask, bool), noisy, z)
  return impose


def _check_joint(z_T, tokens_T, graph, *, steps, image_solver, text_method, grid, t_end,
                 image_mask, image_known, text_mask, text_known, text_temperature):
  _check_steps(steps, t_end)
  if image_solver not in JOINT_IMAGE_SOLVERS:
    raise ValueError(f"image_solver must be one of {JOINT_IMAGE_SOLVERS}, got {image_solver!r}.")
  if text_method not in JOINT_TEXT_METHODS:
    raise ValueError(f"text_method must be one of {JOINT_TEXT_METHODS}, got {text_method!r}.")
  if grid not in GRIDS:
    raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}.")
  if (image_mask is None) != (image_known is None):
    raise ValueError("pass image_mask and image_known together (or neither).")
  if image_known is not None and jnp.shape(image_known) != z_T.shape:
    raise ValueError(f"image_known shape {jnp.shape(image_known)} != z_T shape {z_T.shape}.")
  if z_T.shape[0] != tokens_T.shape[0]:
    raise ValueError(f"batch sizes differ: z_T {z_T.shape}, tokens_T {tokens_T.shape}.")
  _check_text_shape(tokens_T.shape, text_mask, text_known)
  _check_temperature(graph, text_temperature)
