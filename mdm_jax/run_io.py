"""Opening what training and export wrote, read-only: a workdir's newest good checkpoint or an
``experiments.export`` folder, as a ``Run`` (config, tokenizer, trainer, state).

  run = open_run("/tmp/mdm_digits", sampler_overrides(steps=50))
  write_safetensors(out / SAFETENSORS_FILE, run.state)     # what export writes

- ``open_run``: the saved config (brought up to today's fields by ``upgrade_saved_config``, then
  the given overrides), the tokenizer checked against the digest its checkpoint recorded
  (``data.tokenizer_record``), a ``Trainer`` on the config's mesh and the restored state: by
  default ``SAMPLING_KEYS`` only (the EMA parameters, latent statistics and step), never the
  optimizer state.
- ``write_safetensors`` / ``read_safetensors``: a pytree as named tensors
  ("ema/<module>/<param>"), read back against the abstract state with shapes and dtypes checked.

The data stack (sentencepiece, the dataset registry) is imported inside ``open_run`` only, so
``import mdm_jax`` does not load it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

TOKENIZER_FILE = "tokenizer.model"
INFO_FILE = "run_info.json"            # what the data offers (classes, text), for exports
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "ema.safetensors"
SAMPLING_KEYS = ("ema", "latent_stats", "step")   # what generation restores


@dataclasses.dataclass
class Run:
  """A run opened for generation or export (what ``open_run`` returns)."""
  config: Any                  # ml_collections.ConfigDict
  tokenizer: Any               # None when the data has no text (class-to-image only)
  trainer: Any
  state: Any                   # SAMPLING_KEYS only, unless opened with full_state=True
  step: int
  info: dict


def upgrade_saved_config(config):
  """Fills fields that a checkpoint's saved config predates with the behaviour it was trained
  with (not today's default), so an old workdir samples as it trained."""
  if "text_score" not in config.model:  # before the field, SEDD's form was the only one
    config.model.text_score = "sedd"
  if "text_temperature" not in config.sample:  # added with it; before it, always sampled at 1
    config.sample.text_temperature = 1.0
  if "text_pool_cond" not in config.model:  # trained without the pooled caption in adaLN
    config.model.text_pool_cond = False
  if "joint_order" not in config.sample:  # sampled both modalities on one time grid
    config.sample.joint_order = "together"
  if "caption_guidance" not in config.sample:  # one weight guided the class and the caption
    config.sample.caption_guidance = config.sample.guidance
  if "mask_answer" not in config.loss:  # the answer drawn like the rest
    config.loss.mask_answer = False
  for key, value in (("frames", 1), ("tubelet", 1), ("time_orders", True)):
    if key not in config.model:  # before clips, every visual input was one frame
      config.model[key] = value
  # The data values that shape the model were also copied into ``model``, where the data's
  # overrode them: the data section is their one home.
  from mdm_jax.training.trainer import DATA_FIELDS  # pylint: disable=g-import-not-at-top
  for key in DATA_FIELDS:
    if key in config.model:
      del config.model[key]
  if "sharding" not in config:  # the rules lived in code; the layout does not change numbers
    import ml_collections  # pylint: disable=g-import-not-at-top
    from mdm_jax.training import sharding  # pylint: disable=g-import-not-at-top
    config.sharding = ml_collections.ConfigDict(
        dict(logical_axis_rules=sharding.DEFAULT_LOGICAL_AXIS_RULES))
  return config


def apply_overrides(config, overrides):
  """Sets the dotted fields of ``overrides`` ({"sample.steps": 50, ...}) in ``config``, each
  value converted to its field's type; a field the config does not have is a ValueError
  naming it."""
  for key, value in (overrides or {}).items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node.get(p) if hasattr(node, "get") else None
    if node is None or not hasattr(node, "get") or leaf not in node:
      raise ValueError(f"the config has no field {key!r}")
    node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value



def sampler_overrides(steps: int | None = None, guidance: float | None = None,
                      temperature: float | None = None,
                      caption_guidance: float | None = None,
                      joint_order: str | None = None) -> dict:
  """``open_run`` overrides for sampler settings (``load``'s arguments and the ``--steps`` /
  ``--cfg`` / ``--temperature`` / ``--caption_cfg`` / ``--joint_order`` flags of sample and
  evaluate); None keeps the config's."""
  overrides = {}
  if joint_order is not None:
    overrides["sample.joint_order"] = joint_order
  if caption_guidance is not None:
    overrides["sample.caption_guidance"] = caption_guidance
  if steps:
    overrides["sample.steps"] = steps
  if guidance is not None:
    overrides["sample.guidance"] = guidance
  if temperature is not None:
    overrides["sample.text_temperature"] = temperature
  return overrides

def saved_config(path):
  """The config that ``path`` (a workdir's newest checkpoint with a readable config, or an
  export) was saved with, brought up to today's fields (``upgrade_saved_config``): what a CLI
  checks its flags against before anything is restored or compiled."""
  import ml_collections
  from mdm_jax.training import checkpoint as ckpt_lib
  root = epath.Path(path)
  if (root / "checkpoints").is_dir():
    checkpointer = ckpt_lib.Checkpointer(root, read_only=True)
    try:
      saved = checkpointer.restore_config()
    finally:
      checkpointer.close()
    if saved is None:
      raise FileNotFoundError(f"no checkpoint in {root / 'checkpoints'}")
  elif (root / CONFIG_FILE).exists():
    saved = json.loads((root / CONFIG_FILE).read_text())
  else:
    raise FileNotFoundError(f"{path} has no checkpoints/ (nor an export's {CONFIG_FILE}): "
                            f"train first with `python -m experiments.train --workdir={path}`")
  return upgrade_saved_config(ml_collections.ConfigDict(saved))


def open_run(path, overrides: dict | None = None, *, full_state: bool = False) -> Run:
  """Opens what ``experiments.train`` (a workdir) or ``experiments.export`` wrote, read-only.

  Args:
    path: the workdir or export folder (local or any ``etils.epath`` path).
    overrides: {"sample.steps": 50, ...} applied to the saved config.
    full_state: restore the whole train state (optimizer included); by default only
      ``SAMPLING_KEYS``.

  The run's ``tokenizer.model`` must be the one its checkpoint recorded
  (``data.tokenizer_record``): a missing, corrupt or different file is an error
  naming it.
  """
  import ml_collections
  from data import pipeline
  from mdm_jax.training import checkpoint as ckpt_lib
  from data import tokenizer_record as run_tokenizer
  from mdm_jax.training import sharding
  from mdm_jax.training.trainer import Trainer
  root = epath.Path(path)
  ckpt_dir = root / "checkpoints"
  checkpointer = None
  if ckpt_dir.is_dir():
    checkpointer = ckpt_lib.Checkpointer(root, read_only=True)  # a reader changes nothing
    saved = checkpointer.restore_config()
    if saved is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    newest = checkpointer.latest_step()
    recorded = checkpointer.restore_assets(newest)
  elif (root / SAFETENSORS_FILE).exists() and (root / CONFIG_FILE).exists():
    if full_state:
      raise ValueError(f"{root} is an export (EMA parameters only): it has no train state")
    saved = json.loads((root / CONFIG_FILE).read_text())
  else:
    raise FileNotFoundError(f"{path} has no checkpoints/ (nor an export's {SAFETENSORS_FILE}): "
                            f"train first with `python -m experiments.train --workdir={path}`")
  config = upgrade_saved_config(ml_collections.ConfigDict(saved))
  apply_overrides(config, overrides)
  if (root / INFO_FILE).exists():
    info = json.loads((root / INFO_FILE).read_text())
  else:
    info = pipeline.describe(config.data.name, data_dir=config.data.data_dir)
  if checkpointer is None:
    recorded, newest = info.get("assets"), None   # an export's copy of the record
  where = f"checkpoint {newest} of {root}" if newest is not None else f"the export {root}"
  if info["has_caption"]:
    tokenizer = run_tokenizer.open_tokenizer(root / TOKENIZER_FILE, recorded, where=where)
    vocab_size = tokenizer.vocab_size
  else:
    tokenizer, vocab_size = None, config.data.vocab_size
  data_keys = tuple(k for k, has in (("caption", info["has_caption"]), ("vqa", info["has_vqa"]))
                    if has)
  mesh = sharding.make_mesh(**dict(config.mesh))
  trainer = Trainer(config, mesh, vocab_size=vocab_size,
                    num_classes=max(info["num_classes"], 1), data_keys=data_keys)
  only = None if full_state else SAMPLING_KEYS
  if checkpointer is not None:
    state, step = checkpointer.restore_latest(trainer.abstract_state, only=only)
    if step != newest and tokenizer is not None:   # the newest was refused: check this one's
      run_tokenizer.verify(tokenizer, root / TOKENIZER_FILE, checkpointer.restore_assets(step),
                           where=f"checkpoint {step} of {root}")
    checkpointer.close()
  else:
    state = read_safetensors(root / SAFETENSORS_FILE,
                             {k: trainer.abstract_state[k] for k in SAMPLING_KEYS})
    step = int(state["step"])
  return Run(config, tokenizer, trainer, state, step, info)


# ----------------------------------------------------------------------------- safetensors
def _names(tree) -> list[str]:
  return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def write_safetensors(path, tree) -> None:
  """Every leaf of ``tree`` as a named tensor ("ema/<module>/<param>", ...)."""
  from safetensors.numpy import save
  arrays = {n: np.asarray(jax.device_get(x)) for n, x in zip(_names(tree), jax.tree.leaves(tree))}
  epath.Path(path).write_bytes(save(arrays))


def read_safetensors(path, abstract):
  """The tensors of ``write_safetensors`` as the pytree ``abstract`` describes (shapes and
  dtypes checked; arrays placed with its shardings)."""
  from safetensors.numpy import load
  arrays = load(epath.Path(path).read_bytes())
  names, leaves = _names(abstract), jax.tree.leaves(abstract)
  missing = [n for n in names if n not in arrays]
  if missing:
    raise ValueError(f"{path} lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}: "
                     "it was exported from a different model or config")
  out = []
  for n, a in zip(names, leaves):
    x = arrays[n]
    if x.shape != tuple(a.shape) or x.dtype != a.dtype:
      raise ValueError(f"{path}: {n} is {x.dtype}{list(x.shape)}, the model needs "
                       f"{a.dtype}{list(a.shape)}")
    sh = getattr(a, "sharding", None)
    out.append(jax.device_put(x, sh) if sh is not None else jnp.asarray(x))
  return jax.tree.unflatten(jax.tree.structure(abstract), out)
