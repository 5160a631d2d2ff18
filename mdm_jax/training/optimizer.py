"""AdamW with warmup-cosine schedule, masked weight decay, accumulation and EMA.

`make_optimizer` returns an optax GradientTransformation:

  [MultiSteps(k) of] chain(clip_by_global_norm(grad_clip),
                           adamw(warmup_cosine(lr), b1, b2, eps, weight_decay, mask))

Weight decay is off for parameters that should not shrink towards zero: SSM
dynamics (`A_log`, `dt_bias`, `D`), norm scales (`scale`, anything under a module
path containing "norm"), biases, and optionally embeddings. Decisions are made on
the parameter path, so the same optimizer works on flax-boxed (logically
partitioned) and plain parameter trees.

Steps are counted in optimizer updates: with `grad_accum_steps = k` the schedule
advances once per k micro-batches.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.core import meta

PyTree = Any

# Leaf names whose parameters never get weight decay.
NO_DECAY_LEAF_NAMES = frozenset({"A_log", "dt_bias", "D", "scale", "bias"})


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _decays(path: tuple[Any, ...], decay_embeddings: bool) -> bool:
  names = [_key_name(k) for k in path]
  leaf = names[-1] if names else ""
  if leaf in NO_DECAY_LEAF_NAMES:
    return False
  if any("norm" in n.lower() for n in names):
    return False
  if not decay_embeddings and "embedding" in leaf.lower():
    return False
  return True


def weight_decay_mask(params: PyTree, *, decay_embeddings: bool = True) -> PyTree:
  """True where AdamW's decoupled weight decay applies.

  Args:
    params: parameter pytree (nested dicts as produced by flax), plain or with
      `nn.LogicallyPartitioned` boxes.
    decay_embeddings: if False, leaves whose name contains "embedding" (flax
      `nn.Embed` tables, learned position embeddings) are excluded as well.

  Returns:
    A pytree of bools with `params`' structure (a box becomes one bool).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _decays(path, decay_embeddings), params,
      is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def make_lr_schedule(
    *, lr: float, warmup_steps: int, total_steps: int, end_lr_factor: float = 0.0
) -> optax.Schedule:
  """Linear warmup 0 -> lr over `warmup_steps`, cosine to lr*end_lr_factor at total.

  lr(t) = lr * t / W                                         for t < W
        = e + (lr - e) * (1 + cos(pi * (t - W) / (T - W))) / 2   for W <= t <= T
  with e = lr * end_lr_factor, constant e after T.
  """
  if lr <= 0:
    raise ValueError(f"lr={lr} must be > 0.")
  if warmup_steps < 0 or total_steps <= warmup_steps:
    raise ValueError(
        f"Need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps},"
        f" total_steps={total_steps}.")
  if not 0.0 <= end_lr_factor <= 1.0:
    raise ValueError(f"end_lr_factor={end_lr_factor} must be in [0, 1].")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=lr * end_lr_factor)


def make_optimizer(
    *,
    lr: float,
    warmup_steps: int,
    total_steps: int,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    grad_clip: float | None = 1.0,
    grad_accum_steps: int = 1,
    end_lr_factor: float = 0.0,
    decay_embeddings: bool = True,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the training optimizer and its learning-rate schedule.

  Args:
    lr: peak learning rate.
    warmup_steps: linear warmup length, in optimizer updates.
    total_steps: schedule length (warmup included), in optimizer updates.
    weight_decay: decoupled AdamW weight decay (masked, see `weight_decay_mask`).
    b1, b2, eps: Adam moments' decay rates and epsilon.
    grad_clip: max global gradient norm; None or <= 0 disables clipping.
    grad_accum_steps: micro-batches per update; > 1 wraps the chain in
      `optax.MultiSteps`, which applies the update on the mean of k gradients and
      returns zero updates in between.
    end_lr_factor: final lr as a fraction of `lr`.
    decay_embeddings: whether embedding tables get weight decay.

  Returns:
    (tx, schedule): the optax transformation and `schedule(update_step) -> lr` for
    logging (with accumulation, update_step = micro_step // grad_accum_steps).
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps={grad_accum_steps} must be >= 1.")
  if weight_decay < 0:
    raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
  schedule = make_lr_schedule(
      lr=lr, warmup_steps=warmup_steps, total_steps=total_steps,
      end_lr_factor=end_lr_factor)
  parts = []
  if grad_clip is not None and grad_clip > 0:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(optax.adamw(
      schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      mask=lambda p: weight_decay_mask(p, decay_embeddings=decay_embeddings)))
  tx = optax.chain(*parts)
  if grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps)
  return tx, schedule


def ema_decay(step: jax.Array | int, decay: float, warmup: bool = True) -> jax.Array:
  """EMA decay at `step`: min(decay, (1 + step) / (10 + step)) with warmup.

  The warm-up (as TF's ExponentialMovingAverage with num_updates) lets the average
  forget the random initialisation quickly early in training.
  """
  decay = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(
    ema_params: PyTree,
    params: PyTree,
    decay: float,
    step: jax.Array | int | None = None,
) -> PyTree:
  """One EMA step: ema <- d * ema + (1 - d) * params, d = ema_decay(step, decay).

  A pure function on the parameter trees rather than `optax.ema`: optax.ema averages
  the *updates* stream inside the optimizer chain (and debiases instead of warming
  up), whereas we keep an explicit averaged copy of the *parameters* in the train
  state, used for sampling and checkpointed with it. The arithmetic itself is
  optax's `incremental_update` (Polyak averaging); the result keeps each EMA leaf's
  dtype and, under jit, its sharding.

  Args:
    ema_params: current averages, same structure as `params`.
    params: current parameters.
    decay: target decay in [0, 1).
    step: update count for the decay warm-up; None disables the warm-up.

  Returns:
    The new averages.
  """
  d = ema_decay(0 if step is None else step, decay, warmup=step is not None)
  new = optax.incremental_update(params, ema_params, step_size=1.0 - d)
  return jax.tree.map(lambda n, e: n.astype(e.dtype), new, ema_params)
