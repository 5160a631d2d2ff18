"""Preemption: SIGTERM (a spot or preemptible TPU VM's notice, ~30 s before the kill) or SIGINT
makes the trainer finish the step it is in, checkpoint that step and stop.

One process: a Python handler records the signal, and the loop stops after the step in progress.
Several processes: every one must save the same step, and the notice may reach one host only.
JAX's preemption service agrees on it, as orbax and MaxText use it: ``jax.distributed.initialize``
installs its own SIGTERM handler, which tells the coordination service; every process then stops
at the same step (``multihost_utils.reached_preemption_sync_point``, ~10 us a step while no notice
is pending; the notice reaches the others within ~1 s). A SIGINT is passed on to it as a SIGTERM.

A second signal while the checkpoint is being written does not interrupt it (orbax writes
atomically anyway: a kill mid-write leaves the previous checkpoint).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import jax

_log = logging.getLogger(__name__)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _sync_manager():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.preemption_sync_manager


class PreemptionWatch:
  """``with PreemptionWatch() as watch: ... if watch.reached(steps_run): save; stop``.

  Handlers are installed on entry (from the main thread only: elsewhere, e.g. a notebook's
  worker thread, signals keep their default effect) and the previous ones restored on exit.
  """

  def __init__(self):
    self.signal_name: str | None = None   # the first signal this process received
    self.notice_time: float | None = None  # when it arrived (or when the processes agreed)
    self._previous = {}
    self._synced = False

  def _on_signal(self, signum, frame):
    del frame
    if self.signal_name is not None:  # the step's checkpoint is being written: let it finish
      _log.warning("%s received again: already stopping after the checkpoint in progress.",
                   signal.Signals(signum).name)
      return
    self.signal_name, self.notice_time = signal.Signals(signum).name, time.time()
    _log.warning("%s received: stopping after the current step, which is checkpointed.",
                 self.signal_name)
    if self._synced and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier listens for SIGTERM alone

  def __enter__(self) -> PreemptionWatch:
    self._synced = _sync_manager() is not None
    if threading.current_thread() is threading.main_thread():
      # With JAX's service, SIGTERM stays with its handler (a Python one would replace it).
      for signum in (signal.SIGINT,) if self._synced else _SIGNALS:
        self._previous[signum] = signal.signal(signum, self._on_signal)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def reached(self, steps_run: int) -> bool:
    """Whether to checkpoint the step just run and stop; call it after every step, on every
    process, with the number of steps this process has run (1 after the first, not the global
    step of a resumed run: JAX's sync point counts from 0 at start-up, so a notice that arrives
    before the first step stops at 1)."""
    if not self._synced:
      return self.signal_name is not None
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if not multihost_utils.reached_preemption_sync_point(steps_run):
      return False
    if self.notice_time is None:  # SIGTERM went to JAX's handler: this is when we learnt of it
      self.signal_name, self.notice_time = "SIGTERM", time.time()
    return True

  def seconds(self) -> float:
    """Seconds since the notice (on a process that was not signalled itself, or whose SIGTERM
    JAX's handler took: since the processes agreed to stop)."""
    return time.time() - (self.notice_time or time.time())


def send_notice_at(step: int, at_step: int) -> None:
  """Testing (``--signal_at_step``): the last process sends itself SIGTERM after ``at_step``,
  as a preemption notice that reaches one host of several first."""
  if at_step and step == at_step and jax.process_index() == jax.process_count() - 1:
    os.kill(os.getpid(), signal.SIGTERM)
