"""The trainer: model, loss, optimizer, sharded train state and the jitted update step, built
from a config and a device mesh. ``experiments/train.py`` drives it; tests, benchmarks and the
notebook build it directly. Needs no data pipeline (the batch is a dict of arrays).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mdm_jax import generate as gen
from mdm_jax.diffusion.processes import Processes
from mdm_jax.losses import LossConfig, mdm_loss
from mdm_jax.models.mdm import MDM, MDMConfig
from mdm_jax.training import optimizer as optim_lib
from mdm_jax.training import sharding


# The data values that shape the model: they live in ``config.data`` only.
DATA_FIELDS = ("image_size", "channels", "max_text_len", "vocab_size")


def model_config(config, *, vocab_size: int | None = None,
                 num_classes: int | None = None) -> MDMConfig:
  """The network's config: ``config.model`` plus the data values that shape it.

  Args:
    config: the run config; ``DATA_FIELDS`` are read from ``config.data``.
    vocab_size: the trained tokenizer's vocabulary, when it differs from ``data.vocab_size``.
    num_classes: the dataset's class count, replacing ``model.num_classes``.

  Raises:
    ValueError: when ``config.model`` sets one of ``DATA_FIELDS`` (a second home for it).
  """
  doubled = [k for k in DATA_FIELDS if k in config.model]
  if doubled:
    raise ValueError(
        "model." + ", model.".join(doubled) + " set in the model section: the model reads "
        "them from the data section. Set data." + ", data.".join(doubled) + " instead (and "
        "remove them from model).")
  fields = dict(config.model, **{k: config.data[k] for k in DATA_FIELDS})
  if vocab_size is not None:
    fields["vocab_size"] = vocab_size
  if num_classes is not None:
    fields["num_classes"] = num_classes
  return MDMConfig(**fields)


def loss_config(config) -> LossConfig:
  fields = dict(config.loss)
  fields["task_weights"] = tuple(fields["task_weights"])
  return LossConfig(**fields)


def sample_config(config) -> gen.SampleConfig:
  fields = {k: v for k, v in dict(config.sample).items() if k != "num"}
  return gen.SampleConfig(**fields)


class Trainer:
  """Everything one run needs, built from a config and a mesh (testable without ``main``)."""

  def __init__(self, config, mesh, *, vocab_size: int, num_classes: int,
               data_keys=("caption", "vqa")):
    self.config = config
    self.mesh = mesh
    self.model_cfg = model_config(config, vocab_size=vocab_size, num_classes=num_classes)
    self.model = MDM(self.model_cfg)
    # The samplers run the network inside their step loop with the layer scan rolled: unrolled
    # layers (``scan_unroll``, a training-step speed-up on CPU) only multiply the program XLA
    # compiles there (digits' three final samplers compile in 8 s rolled, 21 s unrolled, and
    # draw the same samples). The parameters are the same stacked arrays either way.
    self.sample_model = MDM(dataclasses.replace(self.model_cfg, scan_unroll=1))
    self.loss_cfg = loss_config(config)
    self.procs = Processes.build(self.model_cfg, self.loss_cfg)  # the loss's and the samplers'
    self.sample_cfg = sample_config(config)
    oc = config.optim
    self.tx, self.schedule = optim_lib.make_optimizer(
        lr=oc.lr, warmup_steps=oc.warmup_steps, total_steps=config.total_steps,
        weight_decay=oc.weight_decay, b1=oc.b1, b2=oc.b2, grad_clip=oc.grad_clip,
        grad_accum_steps=oc.grad_accum_steps, end_lr_factor=oc.end_lr_factor)
    self.data_keys = data_keys
    self._samplers = {}  # compiled generate functions, one per (task, num, given inputs)
    self.rng = jax.random.PRNGKey(config.seed)
    if "sharding" not in config:
      raise ValueError("the config has no sharding.logical_axis_rules: set config.sharding."
                       "logical_axis_rules = mdm_jax.training.sharding.DEFAULT_LOGICAL_AXIS_RULES"
                       " (or your own table; a checkpoint's saved config gets them from "
                       "mdm_jax.run_io.upgrade_saved_config)")
    self.rules = sharding.as_rules(config.sharding.logical_axis_rules)
    # Every dimension the mesh could not split as its rule asks: logged once, here, and
    # refused above the config's limit (the dry run prints the list).
    self.replications = []
    # Jitted once, so that the shapes here and init_state's shardings and initialisation share
    # one trace of the model's and the optimizer's init (each trace costs seconds).
    self._init_fn = jax.jit(self._init_state)
    self.abstract_state = sharding.abstract_sharded(self._init_fn, self.rng, mesh,
                                                    rules=self.rules, report=self.replications)
    if self.replications:
      logging.getLogger(__name__).warning(
          "%s", sharding.format_replications(self.replications))
    sharding.check_replications(
        self.replications,
        config.sharding.get("max_replicated_bytes", sharding.DEFAULT_MAX_REPLICATED_BYTES))
    self.state_shardings = jax.tree.map(lambda x: x.sharding, self.abstract_state)
    self.batch_sharding = sharding.batch_sharding(mesh, self.rules)
    # From the abstract state: the model's size is known before anything is allocated.
    self.num_params = sum(math.prod(x.shape)
                          for x in jax.tree.leaves(self.abstract_state["params"]))
    # The update step, sharded, with the old state's buffers donated.
    self.train_step = jax.jit(self.update,
                              in_shardings=(self.state_shardings, self.batch_sharding),
                              out_shardings=(self.state_shardings, None),
                              donate_argnums=(0,))

  # --- model and train-state init (params created sharded) ---------------------------
  def dummy_batch(self, batch_size: int) -> dict[str, jax.Array]:
    mc = self.model_cfg
    b, t = batch_size, mc.max_text_len
    batch = {"image": jnp.zeros((b, *mc.visual_shape), jnp.float32),
             "label": jnp.zeros((b,), jnp.int32)}
    if "caption" in self.data_keys:
      batch["caption"] = jnp.zeros((b, t), jnp.int32)
    if "vqa" in self.data_keys:
      batch["vqa"] = jnp.zeros((b, t), jnp.int32)
      batch["vqa_prompt_len"] = jnp.zeros((b,), jnp.int32)
    return batch

  def _init_state(self, rng):
    k_params, k_state = jax.random.split(rng)
    mc = self.model_cfg
    images = jnp.zeros((1, *mc.visual_shape), jnp.float32)   # clips for a clip model
    variables = self.model.init(k_params, images, jnp.zeros((1, mc.max_text_len), jnp.int32))
    params = variables["params"]
    return {"params": params, "latent_stats": variables["latent_stats"],
            "opt_state": self.tx.init(params), "ema": params,
            "step": jnp.zeros((), jnp.int32), "rng": k_state}

  def init_state(self):
    return sharding.init_sharded(self._init_fn, self.rng, self.mesh, rules=self.rules)

  def mesh_context(self):
    """The mesh and this run's logical axis rules, current (for the jitted functions)."""
    return sharding.mesh_context(self.mesh, self.rules)

  # --- update step ----------------------------------------------------------------------
  def update(self, state, batch):
    """One optimizer step, not jitted: (state, batch) -> (new state, metrics).

    ``train_step`` is this function jitted with the run's shardings and the state donated; a
    benchmark may jit it its own way (e.g. without donation, to reuse the state)."""
    rng = jax.random.fold_in(state["rng"], state["step"])

    def loss_fn(params):
      variables = {"params": params, "latent_stats": state["latent_stats"]}
      (loss, terms), updated = self.model.apply(variables, batch, rng, self.loss_cfg,
                                                self.procs, method=mdm_loss,
                                                mutable=["latent_stats"])
      return loss, (terms, updated["latent_stats"])

    (_, (terms, latent_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    step = state["step"] + 1
    ema = optim_lib.ema_update(state["ema"], params, self.config.optim.ema_decay, step=step)
    terms = dict(terms, grad_norm=optax.global_norm(grads), lr=self.schedule(state["step"]))
    new_state = {"params": params, "latent_stats": latent_stats, "opt_state": opt_state,
                 "ema": ema, "step": step, "rng": state["rng"]}
    return new_state, terms

  # --- sampling -------------------------------------------------------------------------
  def sample(self, state, task: str, rng, num: int, *,
             sample_cfg: gen.SampleConfig | None = None, **given):
    """Generate with the EMA parameters; one compiled function per (task, num, sampler).

    A global computation: under several processes every process must call it (with the same
    arguments); each gets the whole result as numpy arrays.

    ``sample_cfg`` replaces the config's sampler settings for this call (e.g. greedy answers).
    """
    variables = {"params": state["ema"], "latent_stats": state["latent_stats"]}
    with self.mesh_context():
      images, tokens = self.sampler(task, num, tuple(given), sample_cfg)(variables, rng, **given)
    return np.asarray(images), np.asarray(tokens)

  def sampler(self, task: str, num: int, given: tuple[str, ...] = (),
              sample_cfg: gen.SampleConfig | None = None):
    """The jitted ``(variables, rng, **given) -> (images, tokens)`` that ``sample`` calls (also
    compiled ahead of time by the dry run); built once per (task, num, given names, sampler)."""
    sample_cfg = sample_cfg or self.sample_cfg
    key = (task, num, tuple(sorted(given)), sample_cfg)
    if key not in self._samplers:
      fn = functools.partial(gen.generate, self.sample_model, task=task, num=num,
                             procs=self.procs, sample_cfg=sample_cfg)
      # Replicated outputs: every process can read them (a multi-host run calls this on all
      # processes, as for any global computation).
      self._samplers[key] = jax.jit(lambda variables, rng, **kw: fn(variables, rng=rng, **kw),
                                    out_shardings=sharding.replicated(self.mesh))
    return self._samplers[key]
