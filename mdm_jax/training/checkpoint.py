"""Orbax checkpointing of the train state, data-iterator state and config.

Layout: `workdir/checkpoints/<step>/{state, data_iter, config, integrity, assets}`:
  state      the train-state pytree (params, opt_state, ema, step, rng, ...),
             written by `ocp.args.StandardSave` (sharded, multi-host safe);
  data_iter  the grain iterator position (grain's orbax handler, one JSON file per
             process), present when an iterator was passed;
  config     the run config as JSON;
  integrity  two 32-bit digests of every state leaf's bits (JSON), verified on restore;
  assets     what the run's other files must be (JSON, e.g. the tokenizer's digest, see
             `data.tokenizer_record`), when the Checkpointer was given it.

Nothing non-finite is saved: `save` refuses a state with a NaN or Inf anywhere
(parameters, EMA, optimizer moments), since the loss computed before an update cannot
see what the update wrote. Bytes changed on disk after a save (the file size intact)
restore without an error from orbax; the digests catch them.

Writes are atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it
(or writes a commit marker on object stores) when finished, and only finalised step
directories are listed, so a crash mid-write never yields a half checkpoint; left-over
tmp directories are deleted when a Checkpointer opens the directory.

Restoring walks back from the newest step: a checkpoint that does not restore
(unreadable or truncated file, missing item, undecodable config, structure or shape
different from the expected state, digests that do not match) is refused with a
logged reason, and the next older one is tried. A trainer's Checkpointer moves refused
checkpoints newer than the one resumed from to `workdir/refused_checkpoints/` (kept
for inspection, and so that re-saving those step numbers works). A reader's
(`read_only=True`: sample, evaluate, the notebook) changes nothing on disk: it neither
deletes left-over tmp directories (they may be a running trainer's save in progress)
nor moves refused checkpoints.

A checkpoint written by N processes restores on M: orbax reads the arrays into the new
shardings, and the data position (grain's `data_iter/process_<i>-of-<N>.json`, which grain's
handler reads only for the same count) is mapped by the iterator's `reshard_state` where it can
be (this project's pipeline), else left at the stream's start with a warning.

A failed asynchronous save (a full disk, an I/O error) is raised once, as a
`CheckpointWriteError` naming the step, the path, the bytes and the intact previous checkpoint,
by `check()` (call it every step), the next `save` or `wait`; orbax's repeated background
tracebacks are reduced to their one-line messages.

`restore(..., only=("ema", "latent_stats", "step"))` reads a subset of the state's
top-level keys (sampling needs no optimizer state); the digests of what is read are
verified as for a full restore.

grain is imported lazily, so this module imports without the data stack.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mdm_jax.training import paths

PyTree = Any

_log = logging.getLogger(__name__)
_MAX_REASON_CHARS = 600
_FAILED_SAVE_JOIN_S = 120.0  # bound on waiting for a failed save's remaining writers


class NoUsableCheckpointError(RuntimeError):
  """Checkpoints exist in the workdir but none of them could be restored."""


class CheckpointWriteError(RuntimeError):
  """An (asynchronous) checkpoint write failed, e.g. the disk is full."""


class _NoOrbaxTracebacks(logging.Filter):
  """orbax logs a failed background write with a traceback from each thread it passes through
  (dozens of lines, again at the next save); `Checkpointer` reports it once, with the path and
  the remedy, so orbax's records keep their one-line message."""

  def filter(self, record):
    if "orbax" in record.pathname and record.exc_info:
      record.exc_info, record.exc_text = None, None
    return True


# Orbax writes a replicated array "replica-parallel": each replica writes one slice of it, and
# each slice is an eager `lax.slice_in_dim` on that replica's device, so a process's first save
# compiles one small XLA program per array shape and device (the tiny test config on 8 CPU
# devices: 192 programs, 11.7 -> 9.7-10.2 s of CPU for a whole training run whose other programs
# come from the compilation cache). Splitting pays only for large arrays (each host then copies
# and writes a part); below this many bytes per slice the first replica writes the array whole,
# as orbax does for every array on GPU. The files are the same either way.
MIN_REPLICA_SLICE_BYTES = 1 << 20


class _DropOverrideWarning(logging.Filter):
  def filter(self, record):
    return "Type handler registry" not in record.getMessage()


@functools.cache
def _register_array_handler() -> None:
  """Once per process: orbax's jax.Array handler with `MIN_REPLICA_SLICE_BYTES`, its defaults
  otherwise (the per-array metadata store too, which typed PRNG keys need to restore).
  `register_type_handler` is orbax's public way to configure it; StandardSave reads the global
  registry, so there is no per-manager one to pass."""
  # The store orbax's default handler is built with; orbax exports no public name for it.
  from orbax.checkpoint._src.metadata import array_metadata_store
  handler = ocp.type_handlers.ArrayHandler(
      array_metadata_store=array_metadata_store.Store(),
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  absl_logger = logging.getLogger("absl")
  quiet = _DropOverrideWarning()   # orbax warns that it replaces its own default
  absl_logger.addFilter(quiet)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.removeFilter(quiet)


def _root_os_error(e: BaseException) -> OSError | None:
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError):
      return e
    e = e.__cause__ or e.__context__
  return None


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


def _saved_process_count(directory: epath.Path) -> int | None:
  """The process count of the run that wrote the data-iterator item `directory` (one
  `process_<i>-of-<count>.json` a process) when it differs from this run's, else None (also
  when there is no such item: orbax then reports it)."""
  if not directory.exists():
    return None
  counts = set()
  for f in directory.glob("process_*-of-*.json"):
    match = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", f.name)
    if match:
      counts.add(int(match.group(2)))
  if not counts or jax.process_count() in counts:
    return None
  return max(counts)


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


_DIGEST_FORMAT = 1
_GOLDEN = 0x9E3779B1  # odd multiplier (2^32 / golden ratio) spreading positions over 32 bits


def _as_bits(x: jax.Array) -> jax.Array:
  """A leaf's raw bits as an unsigned integer array (PRNG keys by their key data)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned)  # 8-byte leaves gain a trailing dim of 2


def _leaf_inspect(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The leaf's digest, (2,) uint32: the wrapping sum of its words, and of words times an odd
  hash of their position (so swapped or shifted bytes change it too); and whether it is finite.

  Built from per-dimension iotas, not a reshape, so a sharded leaf is digested where it lies
  (one all-reduce); the three reductions are one variadic reduce, so the leaf is read once
  (and XLA compiles one reduction per leaf instead of three)."""
  u = _as_bits(x).astype(jnp.uint32)
  position = jnp.zeros(u.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(u.ndim)):
    position = position + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d) * jnp.uint32(
        stride % 2**32)
    stride *= u.shape[d]
  weight = position * jnp.uint32(_GOLDEN) + jnp.uint32(1)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    finite = jnp.isfinite(x)
    if finite.ndim < u.ndim:  # 8-byte words: u has a trailing dim of 2
      finite = jnp.broadcast_to(finite[..., None], u.shape)
  else:
    finite = jnp.ones(u.shape, jnp.bool_)
  zero = jnp.uint32(0)
  words, weighted, all_finite = jax.lax.reduce(
      (u, u * weight, finite), (zero, zero, jnp.bool_(True)),
      lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] & b[2]), tuple(range(u.ndim)))
  return jnp.stack([words, weighted]), all_finite


@jax.jit
def _inspect_state(state: PyTree) -> tuple[PyTree, PyTree]:
  """Per leaf: its digest and whether it is finite (one pass over the state on device)."""
  leaves, treedef = jax.tree.flatten(state)
  digests, finite = zip(*map(_leaf_inspect, leaves)) if leaves else ((), ())
  return jax.tree.unflatten(treedef, digests), jax.tree.unflatten(treedef, finite)


def state_digests(state: PyTree) -> tuple[dict[str, list[int]], list[str]]:
  """Digests of every leaf ({path: [sum, weighted sum]}) and the paths of non-finite
  leaves, for a state of (possibly sharded, multi-host) jax or numpy arrays."""
  digests, finite = jax.device_get(_inspect_state(state))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  table = {p: [int(v) for v in np.asarray(d)] for p, d in zip(paths, jax.tree.leaves(digests))}
  bad = [p for p, ok in zip(paths, jax.tree.leaves(finite)) if not bool(ok)]
  return table, bad


def _check_digests(step: int, state: PyTree, saved: Mapping[str, Any]) -> None:
  if saved.get("format") != _DIGEST_FORMAT:
    raise ValueError(f"integrity record of step {step} has unknown format {saved.get('format')}")
  digests, _ = state_digests(state)
  expected = saved.get("leaves", {})
  wrong = [p for p, d in digests.items() if expected.get(p) != d]
  if wrong:
    shown = ", ".join(wrong[:5]) + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
    raise ValueError(
        f"the restored arrays do not match the digests written with step {step}: {shown} "
        "changed on disk after the save (corrupted files)")


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
      read_only: bool = False,
      assets: Mapping[str, Any] | None = None,
  ):
    """Opens (creating if needed, unless `read_only`) `workdir/checkpoints`.

    Args:
      workdir: run directory (local path or a path epath understands, e.g. gs://).
      max_to_keep: newest checkpoints kept; None keeps all.
      save_interval_steps: `save` without `force` skips steps not divisible by it.
      async_save: write in a background thread (`save` returns after the
        device-to-host copy); call `wait()` or `close()` before exiting.
      read_only: for readers of another process's run (sample, evaluate): nothing in
        the workdir is created, deleted or moved, and `save` is refused.
      assets: a JSON-serialisable mapping saved with every checkpoint (`restore_assets`
        reads it back): the run's files a checkpoint depends on, e.g. the tokenizer's digest.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep} must be >= 1 or None.")
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / "checkpoints"
    self.refused_directory = self.workdir / "refused_checkpoints"
    self.read_only = read_only
    self._assets = None if assets is None else _as_json_dict(assets)
    self._save_interval_steps = save_interval_steps
    self._pending: tuple[int, int] | None = None  # (step, bytes) of the save in flight
    self._save_threads: list[threading.Thread] = []  # orbax's writer threads of that save
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _NoOrbaxTracebacks) for f in absl_logger.filters):
      absl_logger.addFilter(_NoOrbaxTracebacks())
    _register_array_handler()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            # A tmp directory may be a running trainer's save in progress: only the
            # trainer itself (the writer) may delete them.
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
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

    Raises:
      FloatingPointError: some leaf of `state` holds a NaN or Inf (nothing is written).
      CheckpointWriteError: the previous (asynchronous) save failed.
    """
    if self.read_only:
      raise PermissionError(f"this Checkpointer opened {self.directory} read-only")
    self.wait()  # orbax would wait for the previous save here too; a failure is reported once
    if not force and int(step) % self._save_interval_steps:  # skip the digest pass too
      return False
    digests, bad = state_digests(state)
    if bad:
      shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
      raise FloatingPointError(
          f"Non-finite values in the state to be saved at step {step}: {shown}. It is not"
          " checkpointed; the previous checkpoint is kept. Resume from it with a lower learning"
          " rate or stronger gradient clipping.")
    items = {"state": ocp.args.StandardSave(state),
             "integrity": ocp.args.JsonSave({"format": _DIGEST_FORMAT, "leaves": digests})}
    if data_iter is not None:
      items["data_iter"] = _grain_args(data_iter, save=True)
    if config_dict is not None:
      items["config"] = ocp.args.JsonSave(_as_json_dict(config_dict))
    if self._assets is not None:
      items["assets"] = ocp.args.JsonSave(self._assets)
    nbytes = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
    threads_before = set(threading.enumerate())
    started = self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    if started:
      self._pending = (int(step), nbytes)
      self._save_threads = [t for t in threading.enumerate() if t not in threads_before
                            and type(t).__module__.startswith("orbax.")]
    return started

  def check(self) -> None:
    """Raises CheckpointWriteError if the asynchronous save in flight has failed (cheap while
    it is still writing: call it every step, so a failure surfaces when it happens)."""
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self.wait()

  def _write_error(self, step: int, nbytes: int, e: Exception) -> CheckpointWriteError:
    """The failed save's report: the path, the cause, the bytes it needs, what is intact."""
    cause = _root_os_error(e) or e
    path = getattr(cause, "filename", None) or self.directory / str(step)
    free = ""
    if paths.is_local(self.directory):
      try:
        free = f", {shutil.disk_usage(self.directory).free / 2**20:.1f} MiB free there now"
      except OSError:
        pass
    earlier = [s for s in self.all_steps() if s < step]
    intact = (f"The previous checkpoint (step {earlier[-1]}) is intact: free space or fix the "
              "path, then rerun the same command to resume from it." if earlier else
              "There is no earlier checkpoint: a rerun starts from scratch.")
    reason = (f"[Errno {cause.errno}] {cause.strerror}" if isinstance(cause, OSError)
              and cause.strerror else f"{type(cause).__name__}: {cause}")
    return CheckpointWriteError(
        f"Writing the checkpoint of step {step} failed: {reason} ({path}). It needs about "
        f"{nbytes / 2**20:.1f} MiB for the state's arrays{free}. {intact}")

  def restore(
      self, step: int, abstract_state: PyTree, data_iter: Any = None,
      only: tuple[str, ...] | None = None,
  ) -> PyTree:
    """Restores checkpoint `step` exactly, raising on any problem.

    Args:
      step: which checkpoint.
      abstract_state: the expected state: a pytree of `jax.ShapeDtypeStruct`s with
        shardings (e.g. from `sharding.abstract_sharded`) or of concrete arrays.
        Arrays are restored with these shardings and dtypes.
      data_iter: a grain iterator to set to the saved position (in place), or None.
      only: top-level keys of the state dict to restore (e.g. ("ema", "latent_stats",
        "step") for sampling); the other arrays are never read. Their digests are
        verified as for a full restore.

    Returns:
      The restored state pytree (with only the `only` keys when given).
    """
    if only is not None:
      missing = [k for k in only if k not in abstract_state]
      if missing:
        raise KeyError(f"only={only} names {missing}, not in the state's keys "
                       f"{sorted(abstract_state)}")
      abstract_state = {k: abstract_state[k] for k in only}
    target = jax.tree.map(_to_restore_target, abstract_state)
    if only is None:
      items = {"state": ocp.args.StandardRestore(target)}
    else:  # a subset of the saved tree: orbax reads only these arrays
      items = {"state": ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)}
    saved_count = None
    if data_iter is not None:
      saved_count = _saved_process_count(self.directory / str(step) / "data_iter")
      if saved_count is None:
        items["data_iter"] = _grain_args(data_iter, save=False)
    for name in ("config", "integrity"):  # restored only to check them, when present
      if (self.directory / str(step) / name).exists():
        items[name] = ocp.args.JsonRestore()
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
    state = restored["state"]
    _check_matches(state, target)
    if "integrity" in items:
      _check_digests(step, state, restored["integrity"])
    else:
      _log.info("Checkpoint %d predates integrity digests; restored unverified.", step)
    if saved_count is not None:
      self._reshard_data_iter(step, data_iter, saved_count)
    return state

  def _reshard_data_iter(self, step: int, data_iter: Any, saved_count: int) -> None:
    """Sets `data_iter` from the position a `saved_count`-process run saved (grain's handler
    reads only `process_<i>-of-<this count>.json`), mapped by the iterator's `reshard_state`."""
    count = jax.process_count()
    path = self.directory / str(step) / "data_iter" / f"process_0-of-{saved_count}.json"
    saved = json.loads(path.read_text())
    reshard = getattr(data_iter, "reshard_state", None)
    mapped = reshard(saved, saved_count) if reshard is not None else None
    if mapped is None:
      # A state grain cannot map (its worker processes' read-ahead): the train loop draws one
      # global batch per step, so the stream restarts at global batch `step`, where it was.
      restart = getattr(data_iter, "restart_at", None)
      if restart is not None and restart(step):
        _log.warning(
            "The data position of checkpoint %d was saved by %d process(es) as grain iterator "
            "state %s, which cannot be mapped to %d: the data stream restarts at the saved "
            "global position instead (global batch %d, the checkpoint's step), with the "
            "examples it would have read next.", step, saved_count, sorted(saved), count, step)
        return
      _log.warning(
          "The data position of checkpoint %d was saved by %d process(es) and cannot be mapped "
          "to %d (grain iterator state %s): this run reads the data from the start of its "
          "stream, so examples already trained on are seen again. Resume with %d processes to "
          "continue the data stream exactly.", step, saved_count, count, sorted(saved),
          saved_count)
      return
    state, examples = mapped
    data_iter.set_state(state)
    _log.warning("Checkpoint %d was saved by %d process(es), resumed by %d: its data position "
                 "(global example %d) is mapped to this process count.", step, saved_count,
                 count, examples)

  def restore_latest(
      self, abstract_state: PyTree, data_iter: Any = None,
      only: tuple[str, ...] | None = None,
  ) -> tuple[PyTree, int] | None:
    """Restores the newest checkpoint that restores cleanly.

    Args:
      abstract_state: the expected state (see `restore`).
      only: restore these top-level keys alone (see `restore`).
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
        state = self.restore(step, abstract_state, data_iter=data_iter, only=only)
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
      if refused and self.read_only:
        _log.warning("Restored step %d; newer checkpoint(s) %s were refused (left in"
                     " place: read-only).", step, [s for s, _ in refused])
      elif refused:
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
    """The config saved with checkpoint `step`; by default the newest one that decodes
    (an unreadable config is logged and the next older checkpoint's is used). None when
    there is no checkpoint."""
    steps = self.all_steps() if step is None else [step]
    errors = []
    for s in reversed(steps):
      try:
        restored = self._manager.restore(
            int(s), args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return restored["config"]
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        _log.warning("Refusing the config of checkpoint %d: %s: %s", s, type(e).__name__,
                     str(e)[:_MAX_REASON_CHARS])
        errors.append(s)
    if errors:
      raise NoUsableCheckpointError(
          f"no checkpoint in {self.directory} has a readable config (steps {errors})")
    return None

  def restore_assets(self, step: int) -> dict[str, Any] | None:
    """The `assets` record saved with checkpoint `step`; None when it has none (written
    before records, or by a Checkpointer given no `assets`)."""
    if not (self.directory / str(step) / "assets").exists():
      return None
    restored = self._manager.restore(
        int(step), args=ocp.args.Composite(assets=ocp.args.JsonRestore()))
    return restored["assets"]

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
    """Blocks until any asynchronous save has been written and finalised.

    Raises:
      CheckpointWriteError: that save failed (raised once; the step is not kept).
    """
    pending, self._pending = self._pending, None
    save_threads, self._save_threads = self._save_threads, []
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      # Orbax stops waiting at the first failed part of a save while its other writers (the
      # arrays' threads) may still be running: they are joined here, else they outlive the
      # report and print tracebacks into the interpreter's shutdown.
      for thread in save_threads:
        thread.join(timeout=_FAILED_SAVE_JOIN_S)
      if pending is None:
        raise
      raise self._write_error(*pending, e) from None

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources. A failed save not yet
    reported (the caller is leaving on another error) is logged, not raised over it."""
    try:
      self.wait()
    except CheckpointWriteError as e:
      _log.error("%s", e)
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
