"""The defaults every run derives from (not a run itself: ``--config=base`` is refused).

Each value has one home. The model, loss and sampler sections are the dataclass defaults of
``MDMConfig``, ``LossConfig`` and ``SampleConfig`` (a run lists only what it changes); the data
values the model is shaped by (``image_size``, ``channels``, ``max_text_len``, ``vocab_size``)
live in ``data`` only, and the model config reads them from there when it is built. A run sets
its own budget (``total_steps``, ``batch_size``, ``checkpoint_every``, ``optim.lr``,
``optim.warmup_steps``) and its data (``data.name``): left unset they fail with the field named.

``sharding.logical_axis_rules`` maps the model's logical axis names onto the mesh axes
("data", "fsdp", "tensor"), MaxText style; the table is the library's
(``mdm_jax.training.sharding.DEFAULT_LOGICAL_AXIS_RULES``, where it is explained) and a config
may replace it. ``sharding.max_replicated_bytes`` is the most one dimension left unsplit by the
mesh may cost each device before the run is refused (None: no limit).
"""
import dataclasses

import ml_collections
from ml_collections import config_dict

from mdm_jax.generate import SampleConfig
from mdm_jax.losses import LossConfig
from mdm_jax.models.mdm import MDMConfig
from mdm_jax.training import sharding
from mdm_jax.training.trainer import DATA_FIELDS


def _defaults(cls, exclude=()) -> ml_collections.ConfigDict:
  """A dataclass's fields and defaults as a config section (tuples kept as tuples)."""
  return ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(cls)
                                    if f.name not in exclude})


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = config_dict.placeholder(int)
  c.batch_size = config_dict.placeholder(int)          # global
  c.log_every = 50
  c.sample_every = 0                                    # 0: only at the end
  c.checkpoint_every = config_dict.placeholder(int)
  c.keep_checkpoints = 2

  model_defaults = MDMConfig()
  c.data = ml_collections.ConfigDict(dict(
      name=config_dict.placeholder(str), data_dir=config_dict.placeholder(str),
      worker_count=0, **{k: getattr(model_defaults, k) for k in DATA_FIELDS}))
  c.model = _defaults(MDMConfig, exclude=DATA_FIELDS)  # num_classes is reset from the data
  c.loss = _defaults(LossConfig)
  c.sample = _defaults(SampleConfig)
  c.sample.num = 40                                     # samples written (not a sampler setting)

  c.optim = ml_collections.ConfigDict(dict(
      lr=config_dict.placeholder(float), warmup_steps=config_dict.placeholder(int),
      end_lr_factor=0.05, weight_decay=0.01, b1=0.9, b2=0.99, grad_clip=1.0,
      grad_accum_steps=1, ema_decay=0.999))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # The TPU slice the run is meant for (Google Cloud's accelerator type: v4/v5p sizes count
  # TensorCores, v5e/v6e chips); `train --dry_run --topology=home` compiles for it.
  c.topology = "v5e-1"                                  # Colab's TPU runtime: one v5e chip
  c.sharding = ml_collections.ConfigDict(dict(
      logical_axis_rules=sharding.DEFAULT_LOGICAL_AXIS_RULES,
      max_replicated_bytes=config_dict.placeholder(int)))
  c.sharding.max_replicated_bytes = sharding.DEFAULT_MAX_REPLICATED_BYTES
  return c
