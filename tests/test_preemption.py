"""The preemption watch in one process: real signals delivered to this process."""
from __future__ import annotations

import os
import signal
import time

from mdm_jax.training import preemption


def test_signals_are_recorded_once_and_handlers_restored(caplog):
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with caplog.at_level("WARNING"):
    with preemption.PreemptionWatch() as watch:
      assert not watch.reached(1)
      t0 = time.time()
      os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C: no KeyboardInterrupt, a clean stop
      assert watch.reached(2) and watch.signal_name == "SIGINT"
      first = watch.notice_time
      os.kill(os.getpid(), signal.SIGTERM)  # a second signal while "saving": not fatal
      assert watch.reached(2) and watch.signal_name == "SIGINT" and watch.notice_time == first
      # Counted from the first signal: at most the time since just before it, however slow.
      seconds, since_t0 = watch.seconds(), time.time() - t0
      assert t0 <= first and 0 <= seconds <= since_t0
  assert "SIGTERM received again: already stopping" in caplog.text
  assert {s: signal.getsignal(s) for s in before} == before
