"""A training workdir: reopen it (config, tokenizer, model, latest good checkpoint), and the
files the trainer writes there.

Every path goes through ``etils.epath``, so a workdir can be local or on an object store
(``gs://bucket/run``; orbax checkpoints there too). Object stores have no append and no
directories: metrics are rewritten whole on each flush there, and TensorBoard events need
tensorboardX's own client (``pip install 'mdm-jax[gcs]'``) or are written to a local folder.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from typing import Any

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from mdm_jax.training import checkpoint as ckpt_lib
from mdm_jax.training import sharding


TOKENIZER_FILE = "tokenizer.model"


def is_local(path) -> bool:
  """True for a local file path, False for a URI (gs://, s3://, ...)."""
  return "://" not in os.fspath(path)


def tensorboard_dir(workdir) -> str:
  """Where TensorBoard events of ``workdir`` go: ``workdir/tb``, or a local folder (logged)
  when tensorboardX cannot write to the workdir's storage."""
  logdir = os.fspath(epath.Path(workdir) / "tb")
  if is_local(workdir):
    return logdir
  scheme = os.fspath(workdir).split("://", 1)[0]
  client = {"gs": "google.cloud.storage", "s3": "boto3"}.get(scheme)
  if client is not None:
    try:
      __import__(client)
      return logdir
    except ImportError:
      pass
  local = os.path.join(tempfile.gettempdir(), "mdm_tb", re.sub(r"[^\w.-]+", "_", logdir))
  logging.warning("TensorBoard events go to the local folder %s, not %s: tensorboardX writes "
                  "%s:// only with %s installed (pip install 'mdm-jax[gcs]'). metrics.jsonl in "
                  "the workdir has every logged value.", local, logdir, scheme,
                  client or "a client it supports")
  return local


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  tokenizer: Any               # None when the data has no text (class-to-image only)
  trainer: Any
  state: Any
  step: int
  info: dict


def sampler_overrides(steps: int | None = None, guidance: float | None = None,
                      temperature: float | None = None) -> dict:
  """The ``open_run`` overrides of the ``--steps`` / ``--cfg`` / ``--temperature`` flags of
  sample and evaluate."""
  overrides = {}
  if steps:
    overrides["sample.steps"] = steps
  if guidance is not None:
    overrides["sample.guidance"] = guidance
  if temperature is not None:
    overrides["sample.text_temperature"] = temperature
  return overrides


def vqa_prompts(tokenizer, examples, max_len: int):
  """Question + <sep> ids (the answer left to generate) and prompt lengths, for held-out
  ``examples`` (``data.pipeline.eval_examples``): int32 (n, max_len), int32 (n,)."""
  seqs, plens = zip(*[tokenizer.encode_vqa(e["question"], "", max_len)[:2] for e in examples])
  return np.stack(seqs), np.asarray(plens, np.int32)


def upgrade_saved_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills fields that a checkpoint's saved config predates with the behaviour it was trained
  with (not today's default), so an old workdir samples as it trained."""
  if "text_score" not in config.model:  # added 2026-11-27; before it, SEDD's form was the only one
    config.model.text_score = "sedd"
  if "text_temperature" not in config.sample:  # added with it; before it, always sampled at 1
    config.sample.text_temperature = 1.0
  return config


def open_run(workdir: str, overrides: dict | None = None) -> Run:
  """Loads what ``experiments.train`` wrote to ``workdir`` (config from the checkpoint).

  Args:
    overrides: {"sample.steps": 50, ...} applied to the saved config.
  """
  from data import pipeline, tokenizer as tokenizer_lib
  from mdm_jax.training.trainer import Trainer
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(f"{workdir} has no checkpoints/: train first with "
                            f"`python -m experiments.train --workdir={workdir}`")
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)  # a reader changes nothing
  saved = checkpointer.restore_config()
  if saved is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  config = upgrade_saved_config(ml_collections.ConfigDict(saved))
  for key, value in (overrides or {}).items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value
  info = pipeline.describe(config.data.name, data_dir=config.data.data_dir)
  if info["has_caption"]:
    tokenizer = tokenizer_lib.Tokenizer.load(epath.Path(workdir) / TOKENIZER_FILE)
    vocab_size = tokenizer.vocab_size
  else:
    tokenizer, vocab_size = None, config.data.vocab_size
  data_keys = tuple(k for k, has in (("caption", info["has_caption"]), ("vqa", info["has_vqa"]))
                    if has)
  mesh = sharding.make_mesh(**dict(config.mesh))
  trainer = Trainer(config, mesh, vocab_size=vocab_size,
                    num_classes=max(info["num_classes"], 1), data_keys=data_keys)
  restored = checkpointer.restore_latest(trainer.abstract_state)
  state, step = restored
  checkpointer.close()
  return Run(config, tokenizer, trainer, state, step, info)
