"""The trainer lock and the metrics log (resume without repeated steps)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from mdm_jax.training import metrics_log
from mdm_jax.training import run_lock


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path):
  with run_lock.WorkdirLock(tmp_path):
    with pytest.raises(run_lock.WorkdirLockedError, match=rf"pid {os.getpid()} on host"):
      run_lock.WorkdirLock(tmp_path).acquire()
  # Released on exit: the next trainer takes it.
  with run_lock.WorkdirLock(tmp_path):
    assert (tmp_path / run_lock.LOCK_FILE).exists()
  assert not (tmp_path / run_lock.LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  pid = int(dead.stdout)  # this process has exited
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(
      {"host": os.uname().nodename, "pid": pid, "started": "earlier"}))
  with caplog.at_level("WARNING"):
    with run_lock.WorkdirLock(tmp_path):
      holder = json.loads((tmp_path / run_lock.LOCK_FILE).read_text())
  assert holder["pid"] == os.getpid()
  assert "stale trainer lock" in caplog.text


def _own_record(**changes):
  """A lock record naming this very process (as a restarted container with the same pid
  would find it), with `changes` applied."""
  own = json.loads(run_lock.WorkdirLock("/nonexistent")._record())
  assert own["pid"] == os.getpid() and own["boot_id"] and own["start_ticks"] is not None
  return {**own, **changes}


@pytest.mark.parametrize("changes, reason", [
    ({"boot_id": "00000000-0000-0000-0000-000000000000"}, "recorded before a reboot"),
    ({"start_ticks": 1}, "pid {pid} is now another process"),
], ids=["another_boot", "another_start"])  # no pid in an id: xdist's workers must agree on them
def test_own_pid_from_another_boot_or_start_is_taken_over(tmp_path, caplog, changes, reason):
  # Oracle: the record a restarted container leaves, written by hand; the kernel's boot id
  # and this process's start time are read independently of the lock code.
  with open("/proc/sys/kernel/random/boot_id") as f:
    assert f.read().strip() != changes.get("boot_id")
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(_own_record(**changes)))
  with caplog.at_level("WARNING"):
    with run_lock.WorkdirLock(tmp_path):
      holder = json.loads((tmp_path / run_lock.LOCK_FILE).read_text())
  assert "stale trainer lock" in caplog.text and reason.format(pid=os.getpid()) in caplog.text
  with open(f"/proc/{os.getpid()}/stat") as f:
    assert holder["start_ticks"] == int(f.read().split(")")[-1].split()[19])
  assert not (tmp_path / run_lock.LOCK_FILE).exists()


def test_own_pid_same_boot_and_start_is_still_refused(tmp_path):
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(_own_record()))
  with pytest.raises(run_lock.WorkdirLockedError, match=rf"pid {os.getpid()} on host"):
    run_lock.WorkdirLock(tmp_path).acquire()


def test_a_lock_from_another_host_is_respected(tmp_path):
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(
      {"host": "some-other-host", "pid": 1, "started": "earlier"}))
  with pytest.raises(run_lock.WorkdirLockedError, match="some-other-host"):
    run_lock.WorkdirLock(tmp_path).acquire()


def test_disabled_lock_is_a_no_op(tmp_path):
  with run_lock.WorkdirLock(tmp_path):
    with run_lock.WorkdirLock(tmp_path, enabled=False):
      pass


def test_resume_drops_records_after_the_restored_step(tmp_path):
  log = metrics_log.MetricsLog(tmp_path, start_step=0)
  for step in (1, 2, 3, 4, 5):
    log.write(step, {"loss": float(step)})
  log.close()
  with open(tmp_path / metrics_log.METRICS_FILE, "a") as f:
    f.write('{"step": 6, "loss"')  # a line cut short by SIGKILL
  # The checkpoint the run resumes from is step 3: steps 4-6 are logged again by the run.
  log = metrics_log.MetricsLog(tmp_path, start_step=3)
  for step in (4, 5):
    log.write(step, {"loss": 10.0 + step})
  log.close()
  records = metrics_log.read_metrics(tmp_path / metrics_log.METRICS_FILE)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  assert [r["loss"] for r in records] == [1.0, 2.0, 3.0, 14.0, 15.0]


def test_tensorboard_purges_the_steps_logged_again(tmp_path):
  tb = str(tmp_path / "tb")
  log = metrics_log.MetricsLog(tmp_path, start_step=0, tensorboard_dir=tb)
  for step in (1, 2, 3):
    log.write(step, {"loss": float(step)})
  log.close()
  log = metrics_log.MetricsLog(tmp_path, start_step=1, tensorboard_dir=tb)
  log.write(2, {"loss": 20.0})
  log.close()
  from tensorboardX.proto import event_pb2  # read the event files back (TFRecord framing)
  events = []
  for name in sorted(os.listdir(tb)):
    data = open(os.path.join(tb, name), "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      events.append(event)
  # A START session log at step 2 tells TensorBoard to drop the old file's events from step 2.
  purges = [(e.step, e.session_log.status) for e in events if e.HasField("session_log")]
  assert (2, event_pb2.SessionLog.START) in purges
  scalars = [(e.step, e.summary.value[0].simple_value) for e in events if e.HasField("summary")]
  assert scalars[-1] == (2, 20.0)


def test_an_exception_in_the_loop_finishes_the_save_and_frees_the_workdir(tmp_path, monkeypatch):
  from experiments import configs
  from experiments import train as train_lib
  config = configs.load("tiny")
  # The one-process oracle of tests/test_multiprocess.py (tiny, 6 steps, fsdp over 8 devices, as
  # this process has): one train step compiled for both, whichever runs first (the run's
  # compilation cache).
  config.total_steps, config.checkpoint_every, config.log_every = 6, 3, 1
  config.mesh.data, config.mesh.fsdp = 1, 8

  def fails(*args, **kwargs):  # right after the last step's (asynchronous) save started
    raise RuntimeError("injected failure after the last save")

  monkeypatch.setattr(train_lib, "write_samples", fails)
  with pytest.raises(RuntimeError, match="injected failure"):
    train_lib.train(config, str(tmp_path))
  # The save in flight was finished (finalised step directory, no orbax tmp left), the lock is
  # released, and the log holds each step once.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  assert not (tmp_path / run_lock.LOCK_FILE).exists()
  records = metrics_log.read_metrics(tmp_path / metrics_log.METRICS_FILE)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
