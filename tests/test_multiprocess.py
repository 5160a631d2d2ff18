"""Real multi-process training on one machine: 2 processes x 2 CPU devices, joined by
`jax.distributed` on 127.0.0.1 (gloo collectives), through `python -m experiments.train`.

Oracle: the same command as one process with 8 devices, its 6 steps uninterrupted (it stops
itself after step 6's checkpoint, before the final samples). One workdir goes through
a chain of faults, each run resuming the last one's checkpoint with the same command:
  killed     2 processes, SIGKILLed at step 3 (both, after the step-3 checkpoint);
  one        1 process (8 devices): resumes the 2-process checkpoint (parameters, EMA and
             optimizer state resharded, data position mapped), SIGTERMed after step 4: saves 4;
  preempted  2 processes: resume the 1-process checkpoint; process 1 alone gets SIGTERM (a
             preemption notice reaching one host first) before its first step: both agree on
             step 5, save it and exit 0;
  resumed    2 processes: finish (step 6) and write the final samples once (process 0).
Its losses equal the oracle's step by step. Then `experiments.sample` runs under 2 processes and
`experiments.evaluate` refuses.

All processes use the run's persistent XLA cache (tests/conftest.py); the reference and the
first 2-process run start together. Of a 2-process run only process 0 reads its programs back
in the later runs: jax writes multi-process entries from process 0 alone, and process 1's keys
differ from process 0's (they hash each process's own view of the device topology), so process
1 compiles in every run (its train step 3.2-4.0 s each time, process 0's 0.75 s from the second
run on, measured with JAX_LOG_COMPILES=1).
About 1.5 minutes of wall time on 2 idle cores; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

import subproc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--config=tiny", "--config.total_steps=6", "--config.checkpoint_every=3",
       "--config.log_every=1", "--config.mesh.data=1"]
# 2 processes: fsdp=4, parameters, optimizer state and batch split over both processes' devices,
# two local devices each (a host with several chips). 2 x 4 devices check the same with a quarter
# more CPU (gloo's 8 ranks), for nothing the test asserts.
TWO_PROCESSES = [*RUN, "--config.mesh.fsdp=4"]
# 1 process (the oracle, `one`): fsdp=8 over 8 devices, the test workers' layout, so that the
# in-process run of tests/test_run_bookkeeping.py reads the oracle's train step back (or the
# oracle reads its). Every resume of the chain reshards between the two layouts (the mesh is a
# setting: the config-drift check logs it and goes on).
ONE_PROCESS = [*RUN, "--config.mesh.fsdp=8"]
NOT_LOSS_TERMS = ("step", "steps_per_s")
# All jobs together: ~1.5 min on 2 idle cores. A bound against hangs, not a speed check.
TIMEOUT_S = 2 * subproc.HANG_TIMEOUT_S


class Job:
  """`python -m module args` as `num_processes` processes joined on a free loopback port (one
  plain process when num_processes is 1), each with `devices` CPU devices and its own log."""

  def __init__(self, name, module, args, root, num_processes=2, devices=2):
    self.name, self.procs, self.logs = name, [], []
    self.command = shlex.join([sys.executable, "-m", module, *args])
    port = portpicker.pick_unused_port()
    for i in range(num_processes):
      env = subproc.env(devices)
      for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
      if num_processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
      log = root / f"{name}.{i}.log"
      self.logs.append(log)
      with open(log, "w") as f:
        self.procs.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                                           env=env, stdout=f, stderr=subprocess.STDOUT))

  def wait(self, deadline: float) -> list[int]:
    """Return codes; on the deadline every process is killed and the test fails with logs."""
    while any(p.poll() is None for p in self.procs) and time.time() < deadline:
      time.sleep(0.5)
    if any(p.poll() is None for p in self.procs):
      self.kill()
      pytest.fail(f"{self.name} still running after {TIMEOUT_S} s for all jobs together, "
                  f"killed (a hang?): {self.command}\n{self.text()}")
    return [p.returncode for p in self.procs]

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def log(self, i: int) -> str:
    return self.logs[i].read_text()

  def wait_for_line(self, i: int, text: str, deadline: float) -> None:
    while text not in self.log(i):
      if time.time() > deadline or self.procs[i].poll() is not None:
        self.kill()
        pytest.fail(f"{self.name}: no {text!r} in process {i}'s log\n{self.text()}")
      time.sleep(0.2)

  def text(self) -> str:
    return "\n".join(f"--- {self.name} process {i} (rc {p.returncode}), last lines:\n"
                     + "\n".join(l for l in self.log(i).splitlines()
                                 if "[Gloo]" not in l)[-2500:]
                     for i, p in enumerate(self.procs))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  ref_dir, mp_dir = root / "ref", root / "mp"
  jobs = []

  def job(*args, **kw):
    jobs.append(Job(*args, root=root, **kw))
    return jobs[-1]

  try:
    deadline = time.time() + TIMEOUT_S
    # The oracle's losses are all it is for: killed by its own SIGKILL after step 6's
    # checkpoint, it skips the final samples (programs no other run of the chain compiles).
    ref = job("ref", "experiments.train",
              [*ONE_PROCESS, f"--workdir={ref_dir}", "--kill_at_step=6"], num_processes=1,
              devices=8)
    killed = job("killed", "experiments.train",
                 [*TWO_PROCESSES, f"--workdir={mp_dir}", "--kill_at_step=3"])
    killed_rc = killed.wait(deadline)
    killed_metrics = _metrics(mp_dir) if os.path.exists(mp_dir / "metrics.jsonl") else []
    files = lambda step: sorted(os.listdir(mp_dir / "checkpoints" / str(step) / "data_iter"))
    killed_files = files(3) if killed_rc == [-9, -9] else None
    ref_rc = ref.wait(deadline)  # before `one`, which finds its compiled executables
    one = job("one", "experiments.train",
              [*ONE_PROCESS, f"--workdir={mp_dir}", "--signal_at_step=4"], num_processes=1,
              devices=8)
    # evaluate refuses 2 processes at start-up, before it reads the workdir: it runs alongside.
    evaluate = job("evaluate", "experiments.evaluate", [f"--workdir={mp_dir}"])
    one_rc = one.wait(deadline)
    one_files = files(4) if one_rc == [0] else None
    preempted = job("preempted", "experiments.train", [*TWO_PROCESSES, f"--workdir={mp_dir}"])
    # After the restore, before the first step's compile (tens of seconds): process 1 alone.
    preempted.wait_for_line(1, "Resumed from the checkpoint at step 4", deadline)
    preempted.procs[1].send_signal(signal.SIGTERM)
    signalled = time.time()
    preempted_rc = preempted.wait(deadline)
    preempted_exit = time.time()
    preempted_seconds = preempted_exit - signalled
    resumed = job("resumed", "experiments.train", [*TWO_PROCESSES, f"--workdir={mp_dir}"])
    resumed_rc = resumed.wait(deadline)
    out = root / "out"
    sample = job("sample", "experiments.sample",
                 [f"--workdir={mp_dir}", "--task=class", "--num=10", f"--out={out / 'class'}"])
    sample_rc, evaluate_rc = sample.wait(deadline), evaluate.wait(deadline)
    yield dict(ref=ref, ref_rc=ref_rc, ref_dir=ref_dir, mp_dir=mp_dir, killed=killed,
               killed_rc=killed_rc, killed_metrics=killed_metrics, killed_files=killed_files,
               one=one, one_rc=one_rc, one_files=one_files, preempted=preempted,
               preempted_rc=preempted_rc, preempted_seconds=preempted_seconds,
               preempted_exit=preempted_exit, resumed=resumed,
               resumed_rc=resumed_rc, sample=sample, sample_rc=sample_rc, out=out,
               evaluate=evaluate, evaluate_rc=evaluate_rc)
  finally:
    for j in jobs:
      j.kill()


def _log_time(log: str, text: str) -> float:
  """The epoch time of the first absl log line containing `text` (local time, no year)."""
  line = next(l for l in log.splitlines() if text in l)
  month_day, clock = line[1:5], line.split()[1]
  whole, fraction = clock.split(".")
  return time.mktime(time.strptime(f"{time.localtime().tm_year}{month_day} {whole}",
                                   "%Y%m%d %H:%M:%S")) + float("0." + fraction)


def _metrics(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_killed_resharded_preempted_chain_matches_one_process(runs):
  assert runs["ref_rc"] == [-9], runs["ref"].text()   # its own SIGKILL after step 6
  # Both processes died by their own SIGKILL after the step-3 checkpoint.
  assert runs["killed_rc"] == [-9, -9], runs["killed"].text()
  assert [r["step"] for r in runs["killed_metrics"]] == [1, 2, 3]
  assert runs["killed_files"] == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  for i in range(2):
    assert "(2 processes)" in runs["killed"].log(i), runs["killed"].text()

  # 2 -> 1 process: the state and the data position (3 global batches of 16) carry over.
  one = runs["one"].log(0)
  assert runs["one_rc"] == [0], runs["one"].text()
  assert "Resumed from the checkpoint at step 3" in one
  assert ("saved by 2 process(es), resumed by 1: its data position (global example 48) is "
          "mapped") in one
  assert "Preempted (SIGTERM): saved the checkpoint of step 4 and stopped" in one
  assert runs["one_files"] == ["commit_success.txt", "process_0-of-1.json"]

  # 1 -> 2 processes, then a SIGTERM to process 1 alone: both save step 5 and exit 0.
  assert runs["preempted_rc"] == [0, 0], runs["preempted"].text()
  for i in range(2):
    log = runs["preempted"].log(i)
    assert "Resumed from the checkpoint at step 4" in log
    assert "saved by 1 process(es), resumed by 2: its data position (global example 64)" in log
    assert "Preempted (SIGTERM): saved the checkpoint of step 5 and stopped" in log, log[-2000:]
  # The notice came before step 5's compile, which the run finishes: the notice's ~30 s are for
  # what follows the step (agreeing, saving, exiting), and nothing else follows it: no step 6,
  # no final samples (the time itself is the machine's, only printed).
  for i in range(2):
    log = runs["preempted"].log(i)
    assert "step 6/6" not in log and "Training done" not in log and "Wrote " not in log, (
        log[-2000:])
  after_step = runs["preempted_exit"] - _log_time(runs["preempted"].log(0), "step 5/6")
  print(f"\n2-process preemption: SIGTERM to process 1 before step 5; step 5 saved by both; "
        f"{runs['preempted_seconds']:.1f}s from SIGTERM to both exits (the step's compile "
        f"included), {after_step:.1f}s from the end of step 5")
  assert after_step >= 0, after_step
  assert runs["resumed_rc"] == [0, 0], runs["resumed"].text()
  for i in range(2):
    assert "Resumed from the checkpoint at step 5" in runs["resumed"].log(i)
  mp_dir = runs["mp_dir"]
  assert sorted(os.listdir(mp_dir / "checkpoints")) == ["5", "6"]  # keep_checkpoints=2
  assert not os.path.exists(mp_dir / "trainer.lock")

  want = _metrics(runs["ref_dir"])
  got = _metrics(mp_dir)  # process 0's, written by the four runs in turn
  assert [r["step"] for r in want] == [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
  for g, w in zip(got, want):
    terms = [k for k in w if k not in NOT_LOSS_TERMS]
    assert {"loss", "diff_img", "diff_txt", "rec_img", "rec_txt", "kl"} <= set(terms)
    # Same examples in the same order; only the cross-process sums' order differs.
    np.testing.assert_allclose([g[k] for k in terms], [w[k] for k in terms], rtol=1e-5,
                               atol=1e-6, err_msg=f"step {w['step']}: {terms}")
  assert len({w["loss"] for w in want}) == 6


def test_final_samples_written_once(runs):
  assert runs["resumed_rc"] == [0, 0], runs["resumed"].text()
  samples = runs["mp_dir"] / "samples"
  assert sorted(os.listdir(samples)) == ["captions_final.txt", "class2img_final.png",
                                         "joint_final.png", "joint_final.txt"]
  wrote = [l for i in range(2) for l in runs["resumed"].log(i).splitlines() if "Wrote " in l]
  assert len(wrote) == 4 and all("train.py" in l for l in wrote)  # one line a file, process 0
  assert "Wrote " not in runs["resumed"].log(1)
  assert len((samples / "captions_final.txt").read_text().splitlines()) == 10


def test_sample_runs_under_two_processes_and_evaluate_refuses(runs):
  assert runs["sample_rc"] == [0, 0], runs["sample"].text()
  with np.load(runs["out"] / "class.npz") as f:
    assert f["images"].shape == (10, 8, 8, 1)
    np.testing.assert_array_equal(f["labels"], np.arange(10) % 10)
  assert "wrote" in runs["sample"].log(0) and "wrote" not in runs["sample"].log(1)
  assert all(rc != 0 for rc in runs["evaluate_rc"]), runs["evaluate"].text()
  for i in range(2):
    assert "experiments.evaluate runs in one process" in runs["evaluate"].log(i)


def test_coordinator_without_process_count_is_refused(monkeypatch):
  from experiments import distributed
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(k, raising=False)
  with pytest.raises(ValueError, match="without the process count and index: pass "
                                       "--num_processes and --process_id"):
    distributed.maybe_initialize("auto", coordinator_address="127.0.0.1:1", num_processes=2)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  distributed.maybe_initialize("no")  # "no" never joins, whatever the environment says
