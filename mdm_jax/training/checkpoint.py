"""Orbax checkpointing of the train state, data-iterator state and config.

Layout: `workdir/checkpoints/<step>/{state, data_iter, config}`:
  state      the train-state pytree (params, opt_state, ema, step, rng, ...),
             written by `ocp.args.StandardSave` (sharded, multi-host safe);
  data_iter  the grain iterator position (grain's orbax handler, one JSON file per
             process), present when an iterator was passed;
  config     the run config as JSON.

Writes are atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it
(or writes a commit marker on object stores) when finished, and only finalised step
directories are listed, so a crash mid-write never yields a half checkpoint; left-over
tmp directories are deleted when a Checkpointer opens the directory.

Restoring walks back from the newest step: a checkpoint that does not restore
(unreadable or truncated file, missing item, structure or shape different from the
expected state) is refused with a logged reason, and the next older one is tried.
Refused checkpoints newer than the one resumed from are moved to
`workdir/refused_checkpoints/` (kept for inspection, and so that re-saving those
step numbers works).

grain is imported lazily, so this module imports without the data stack.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any

_log = logging.getLogger(__name__)
_MAX_REASON_CHARS = 600


class NoUsableCheckpointError(RuntimeError):
  """Checkpoints exist in the workdir but none of them could be restored."""


def check_finite(step: int, loss_terms: Mapping[str, Any]) -> None:
  """Raises FloatingPointError if any loss term (scalar or array) is not finite.

  Call it on the step's metrics before `Checkpointer.save`, so that a diverged
  state is never checkpointed.

  Args:
    step: the training step, for the message.
    loss_terms: name -> scalar or array (jax or numpy); non-numeric values are
      ignored.

  Raises:
    FloatingPointError: naming the step and every non-finite term.
  """
  bad = []
  for name, value in loss_terms.items():
    arr = np.asarray(jax.device_get(value))
    if arr.dtype.kind not in "fc":  # ints/bools are always finite.
      continue
    finite = np.isfinite(arr)
    if not finite.all():
      if arr.ndim == 0:
        bad.append(f"{name}={arr.item()}")
      else:
        bad.append(f"{name} ({int((~finite).sum())} of {arr.size} entries"
                   " non-finite)")
  if bad:
    raise FloatingPointError(
        f"Non-finite loss at step {step}: {', '.join(bad)}. This step is not"
        " checkpointed; resume from the last checkpoint, e.g. with a lower learning"
        " rate or stronger gradient clipping.")


def _grain_args(data_iter: Any, *, save: bool) -> Any:
  """grain's orbax args for an iterator (grain imported only when needed)."""
  try:
    import grain.checkpoint as grain_checkpoint  # pylint: disable=g-import-not-at-top
    cls = grain_checkpoint.CheckpointSave if save else grain_checkpoint.CheckpointRestore
  except (ImportError, AttributeError):  # Older grain releases.
    import grain.python as grain_python  # pylint: disable=g-import-not-at-top
    cls = (grain_python.PyGrainCheckpointSave if save
           else grain_python.PyGrainCheckpointRestore)
  return cls(data_iter)


def _as_json_dict(config_dict: Any) -> dict[str, Any]:
  if hasattr(config_dict, "to_dict"):  # ml_collections.ConfigDict
    config_dict = config_dict.to_dict()
  if not isinstance(config_dict, Mapping):
    raise ValueError(
        f"config_dict must be a mapping (or have .to_dict()), got"
        f" {type(config_dict).__name__}.")
  try:
    json.dumps(config_dict)
  except TypeError as e:
    raise ValueError(
        f"config_dict is not JSON-serialisable ({e}); convert tuples/objects to"
        " lists, numbers or strings before saving.") from e
  return dict(config_dict)


def _to_restore_target(leaf: Any) -> Any:
  """ShapeDtypeStruct (with a sharding) for a concrete or abstract leaf."""
  if isinstance(leaf, jax.ShapeDtypeStruct):
    if getattr(leaf, "sharding", None) is None:
      return jax.ShapeDtypeStruct(
          leaf.shape, leaf.dtype,
          sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    return leaf
  return ocp.utils.to_shape_dtype_struct(leaf)


def _check_matches(restored: PyTree, target: PyTree) -> None:
  """Raises ValueError if `restored` differs from `target` in structure or shapes."""
  r_struct, t_struct = jax.tree.structure(restored), jax.tree.structure(target)
  if r_struct != t_struct:
    raise ValueError(
        f"restored state structure {r_struct} differs from the expected {t_struct}")
  for (path, r), t in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                          jax.tree.leaves(target)):
    if np.shape(r) != tuple(t.shape):
      raise ValueError(
          f"{jax.tree_util.keystr(path)} has shape {np.shape(r)} in the checkpoint"
          f" but {tuple(t.shape)} is expected")


class Checkpointer:
  """Saves and restores (state, data-iterator state, config) with orbax.

  Usage in a train loop:

    ckpt = Checkpointer(workdir, max_to_keep=3)
    restored = ckpt.restore_latest(abstract_state, data_iter=it)
    state, start = restored if restored else (init_state(), 0)
    for step in range(start + 1, total + 1):
      state, metrics = train_step(state, next(it))
      if step % save_every == 0 or step == total:
        check_finite(step, metrics)     # never checkpoint a NaN step
        ckpt.save(step, state, data_iter=it, config_dict=config)
    ckpt.close()                        # waits for the async write
  """

  def __init__(
      self,
      workdir: str | epath.PathLike,
      *,
      max_to_keep: int | None = 3,
      save_interval_steps: int = 1,
      async_save: bool = True,
  ):
    """Opens (creating if needed) `workdir/checkpoints`.

    Args:
      workdir: run directory (local path or a path epath understands, e.g. gs://).
      max_to_keep: newest checkpoints kept; None keeps all.
      save_interval_steps: `save` without `force` skips steps not divisible by it.
      async_save: write in a background thread (`save` returns after the
        device-to-host copy); call `wait()` or `close()` before exiting.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep} must be >= 1 or None.")
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / "checkpoints"
    self.refused_directory = self.workdir / "refused_checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        ))

  def all_steps(self) -> list[int]:
    """Finalised checkpoint steps on disk, ascending."""
    return sorted(self._manager.all_steps(read=True))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(
      self,
      step: int,
      state: PyTree,
      data_iter: Any = None,
      config_dict: Mapping[str, Any] | None = None,
      force: bool = False,
  ) -> bool:
    """Saves `state` (+ iterator position and config) as checkpoint `step`.

    Args:
      step: training step (the checkpoint's name).
      state: train-state pytree of jax/numpy arrays (typed PRNG keys allowed).
      data_iter: a grain iterator (`iter(IterDataset)` or a DataLoader iterator)
        whose position is saved, or None.
      config_dict: JSON-serialisable mapping (or ConfigDict) saved alongside.
      force: save even if `step` is off the save interval.

    Returns:
      Whether a checkpoint was started (False when skipped by the interval).
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data_iter"] = _grain_args(data_iter, save=True)
    if config_dict is not None:
      items["config"] = ocp.args.JsonSave(_as_json_dict(config_dict))
    return self._manager.save(
        int(step), args=ocp.args.Composite(**items), force=force)

  def restore(
      self, step: int, abstract_state: PyTree, data_iter: Any = None
  ) -> PyTree:
    """Restores checkpoint `step` exactly, raising on any problem.

    Args:
      step: which checkpoint.
      abstract_state: the expected state: a pytree of `jax.ShapeDtypeStruct`s with
        shardings (e.g. from `sharding.abstract_sharded`) or of concrete arrays.
        Arrays are restored with these shardings and dtypes.
      data_iter: a grain iterator to set to the saved position (in place), or None.

    Returns:
      The restored state pytree.
    """
    target = jax.tree.map(_to_restore_target, abstract_state)
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iter is not None:
      items["data_iter"] = _grain_args(data_iter, save=False)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
    state = restored["state"]
    _check_matches(state, target)
    return state

  def restore_latest(
      self, abstract_state: PyTree, data_iter: Any = None
  ) -> tuple[PyTree, int] | None:
    """Restores the newest checkpoint that restores cleanly.

    Args:
      abstract_state: the expected state (see `restore`).
      data_iter: a grain iterator to set to the saved position, or None. It is
        left at its current position if nothing is restored.

    Returns:
      (state, step), or None when the workdir holds no checkpoint (fresh start).

    Raises:
      NoUsableCheckpointError: checkpoints exist but none restores.
    """
    self.wait()
    steps = self.all_steps()
    if not steps:
      return None
    iter_state = data_iter.get_state() if data_iter is not None else None
    refused = []
    for step in reversed(steps):
      try:
        state = self.restore(step, abstract_state, data_iter=data_iter)
      except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {e}"
        if len(reason) > _MAX_REASON_CHARS:
          reason = reason[:_MAX_REASON_CHARS] + " ..."
        _log.warning(
            "Refusing checkpoint at step %d (%s): %s", step,
            self.directory / str(step), reason)
        refused.append((step, reason))
        if data_iter is not None:
          data_iter.set_state(iter_state)  # undo a partial restore.
        continue
      if refused:
        self._set_aside([s for s, _ in refused])
        _log.warning(
            "Resumed from step %d; newer checkpoint(s) %s were refused and moved"
            " to %s.", step, [s for s, _ in refused], self.refused_directory)
      return state, step
    details = "\n".join(f"  step {s}: {r}" for s, r in refused)
    raise NoUsableCheckpointError(
        f"None of the {len(refused)} checkpoint(s) in {self.directory} could be"
        f" restored:\n{details}\nIf the model or config changed on purpose, start"
        " fresh with a new --workdir (or move the old checkpoints directory"
        " away).")

  def restore_config(self, step: int | None = None) -> dict[str, Any] | None:
    """The config saved with checkpoint `step` (default: latest), or None."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    restored = self._manager.restore(
        int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]

  def _set_aside(self, steps: list[int]) -> None:
    """Moves refused step directories out of `checkpoints/` (process 0 only)."""
    if jax.process_index() == 0:
      self.refused_directory.mkdir(parents=True, exist_ok=True)
      for step in steps:
        dest = self.refused_directory / str(step)
        if dest.exists():
          dest = self.refused_directory / f"{step}-{int(time.time())}"
        (self.directory / str(step)).rename(dest)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("mdm_checkpoint_set_aside")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until any asynchronous save has been written and finalised."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
