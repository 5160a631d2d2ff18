"""One trainer per workdir: a lock file held for the life of a training run.

``workdir/trainer.lock`` holds JSON ``{"host", "pid", "started", "boot_id", "start_ticks"}`` of
its holder. A second trainer on the same workdir is refused with a message naming the holder. A
lock whose holder is gone is taken over with a warning, so a SIGKILLed run can be resumed by
simply starting it again. Gone means, on the same host: no process has that pid, or the machine
has rebooted since (another boot id), or the process with that pid started at another time than
the holder (``/proc/<pid>/stat``'s start time) -- a container restarted with the same pid, even
the very process asking, takes over its stale lock instead of refusing itself. On multi-host runs
only process 0 takes the lock.

The lock is created with ``O_CREAT | O_EXCL`` on local filesystems (atomic). Object stores
(``gs://``) have no exclusive create through ``etils.epath``; there the check is a
read-then-write (two trainers started within the same second could both pass it).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from etils import epath

from mdm_jax.training import paths

LOCK_FILE = "trainer.lock"
_log = logging.getLogger(__name__)


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir."""


def _boot_id() -> str | None:
  try:
    return epath.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError:  # not Linux
    return None


def _start_ticks(pid: int) -> int | None:
  """The process's start time (clock ticks since boot, field 22 of ``/proc/<pid>/stat``), or
  None where there is no such process or no /proc."""
  try:
    stat = epath.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  # The command name (field 2) is in parentheses and may hold spaces: split after it.
  return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _holder_gone(holder: dict) -> str | None:
  """Why the lock's recorded holder is certainly not running (None: it may be)."""
  if holder.get("unreadable"):
    return "unreadable lock file"
  if holder.get("host") != socket.gethostname():
    return None  # another machine's processes cannot be inspected from here
  pid = int(holder.get("pid", -1))
  if not _pid_alive(pid):
    return "not running"
  boot_id = _boot_id()
  if holder.get("boot_id") and boot_id and holder["boot_id"] != boot_id:
    return f"recorded before a reboot (boot id {holder['boot_id']}, now {boot_id})"
  ticks = _start_ticks(pid)
  if holder.get("start_ticks") is not None and ticks is not None and holder["start_ticks"] != ticks:
    return (f"pid {pid} is now another process (started at tick {ticks}, the holder at "
            f"{holder['start_ticks']})")
  return None


class WorkdirLock:
  """Context manager: ``with WorkdirLock(workdir): train(...)``."""

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
    """``enabled=False`` (processes other than 0) makes it a no-op."""
    self.path = epath.Path(workdir) / LOCK_FILE
    self.enabled = enabled
    self._held = False

  def _record(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "boot_id": _boot_id(),
                       "start_ticks": _start_ticks(os.getpid())})

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {"host": "?", "pid": -1, "started": "?", "unreadable": True}

  def _create(self) -> bool:
    """Creates the lock file if absent; False if it exists."""
    if paths.is_local(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(self._record())
      return True
    if self.path.exists():
      return False
    self.path.write_text(self._record())
    return True

  def acquire(self) -> None:
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a stale lock removed between our checks is retried
      if self._create():
        self._held = True
        return
      holder = self._holder()
      if holder is None:
        continue
      gone = _holder_gone(holder)
      if gone:
        _log.warning("Taking over the stale trainer lock %s (holder %s: %s).",
                     self.path, holder, gone)
        self.path.unlink(missing_ok=True)
        continue
      raise WorkdirLockedError(
          f"{self.path.parent} is already being trained by pid {holder.get('pid')} on host "
          f"{holder.get('host')} (started {holder.get('started')}). Two trainers on one "
          "workdir would overwrite each other's checkpoints and metrics: wait for it, stop it, "
          f"or use another --workdir. If that process is certainly gone, delete {self.path}.")
    raise WorkdirLockedError(f"could not take the trainer lock {self.path}; try again")

  def release(self) -> None:
    if self._held:
      self.path.unlink(missing_ok=True)
      self._held = False

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
