"""A training workdir: reopen it (config, tokenizer, model, latest good checkpoint), and the
files the trainer writes there.

Every path goes through ``etils.epath``, so a workdir can be local or on an object store
(``gs://bucket/run``; orbax checkpoints there too). Object stores have no append and no
directories: metrics are rewritten whole on each flush there, and TensorBoard events need
tensorboardX's own client (``pip install 'mdm-jax[gcs]'``) or are written to a local folder.
"""
from __future__ import annotations

import os
import re
import tempfile

from absl import logging
from etils import epath
import numpy as np

# Reopening a run lives in the library (mdm_jax.run_io, behind mdm_jax.load); re-exported here
# for the CLIs.
from mdm_jax.run_io import (TOKENIZER_FILE, Run, open_run, sampler_overrides,  # noqa: F401
                            upgrade_saved_config)
from mdm_jax.training.paths import is_local


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


def vqa_prompts(tokenizer, examples, max_len: int):
  """Question + <sep> ids (the answer left to generate) and prompt lengths, for held-out
  ``examples`` (``data.pipeline.eval_examples``): int32 (n, max_len), int32 (n,)."""
  seqs, plens = zip(*[tokenizer.encode_vqa(e["question"], "", max_len)[:2] for e in examples])
  return np.stack(seqs), np.asarray(plens, np.int32)
