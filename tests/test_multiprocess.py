"""Real multi-process training on one machine: 2 processes x 4 CPU devices, joined by
`jax.distributed` on 127.0.0.1 (gloo collectives), through `python -m experiments.train`.

Oracle: the same command as one process with 8 devices. The 2-process run is SIGKILLed at
step 3 (both processes, after the step-3 checkpoint), rerun with the same command, resumes from
the orbax checkpoint both processes wrote, and writes the final samples once (process 0) with
no hang. Then `experiments.sample` runs under 2 processes and `experiments.evaluate` refuses.

All processes use the run's persistent XLA cache (tests/conftest.py); the reference and the
first 2-process run start together (the persistent cache does not carry over between
multi-process runs: their keys differ per run and process, so each 2-process run compiles).
About 4 minutes of wall time on 2 idle cores; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

import subproc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fsdp=8: parameters, optimizer state and batch are split over both processes' devices.
RUN = ["--config=tiny", "--config.total_steps=4", "--config.checkpoint_every=3",
       "--config.log_every=1", "--config.mesh.data=1", "--config.mesh.fsdp=8"]
NOT_LOSS_TERMS = ("step", "steps_per_s")
# All jobs together: ~4 min on 2 idle cores. A bound against hangs, not a speed check.
TIMEOUT_S = 2 * subproc.HANG_TIMEOUT_S


class Job:
  """`python -m module args` as `num_processes` processes joined on a free loopback port (one
  plain process when num_processes is 1), each with `devices` CPU devices and its own log."""

  def __init__(self, name, module, args, root, num_processes=2, devices=4):
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
    ref = job("ref", "experiments.train", [*RUN, f"--workdir={ref_dir}"],
              num_processes=1, devices=8)
    killed = job("killed", "experiments.train",
                 [*RUN, f"--workdir={mp_dir}", "--kill_at_step=3"])
    killed_rc = killed.wait(deadline)
    killed_metrics = _metrics(mp_dir) if os.path.exists(mp_dir / "metrics.jsonl") else []
    resumed = job("resumed", "experiments.train", [*RUN, f"--workdir={mp_dir}"])
    resumed_rc = resumed.wait(deadline)
    ref_rc = ref.wait(deadline)
    out = root / "out"
    sample = job("sample", "experiments.sample",
                 [f"--workdir={mp_dir}", "--task=class", "--num=10", f"--out={out / 'class'}"])
    evaluate = job("evaluate", "experiments.evaluate", [f"--workdir={mp_dir}"])
    sample_rc, evaluate_rc = sample.wait(deadline), evaluate.wait(deadline)
    yield dict(ref=ref, ref_rc=ref_rc, ref_dir=ref_dir, mp_dir=mp_dir, killed=killed,
               killed_rc=killed_rc, killed_metrics=killed_metrics, resumed=resumed,
               resumed_rc=resumed_rc, sample=sample, sample_rc=sample_rc, out=out,
               evaluate=evaluate, evaluate_rc=evaluate_rc)
  finally:
    for j in jobs:
      j.kill()


def _metrics(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_killed_rerun_resumes_and_matches_one_process(runs):
  assert runs["ref_rc"] == [0], runs["ref"].text()
  # Both processes died by their own SIGKILL after the step-3 checkpoint.
  assert runs["killed_rc"] == [-9, -9], runs["killed"].text()
  assert [r["step"] for r in runs["killed_metrics"]] == [1, 2, 3]
  assert runs["resumed_rc"] == [0, 0], runs["resumed"].text()
  for i in range(2):
    assert "(2 processes)" in runs["killed"].log(i), runs["killed"].text()
    assert "Resumed from the checkpoint at step 3" in runs["resumed"].log(i)
  mp_dir = runs["mp_dir"]
  assert sorted(os.listdir(mp_dir / "checkpoints")) == ["3", "4"]
  assert sorted(os.listdir(mp_dir / "checkpoints" / "3" / "data_iter")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]

  want = _metrics(runs["ref_dir"])
  got = _metrics(mp_dir)  # process 0's: steps 1-3 of the killed run, then step 4
  assert [r["step"] for r in want] == [r["step"] for r in got] == [1, 2, 3, 4]
  for g, w in zip(got, want):
    terms = [k for k in w if k not in NOT_LOSS_TERMS]
    assert {"loss", "diff_img", "diff_txt", "rec_img", "rec_txt", "kl"} <= set(terms)
    # Same examples in the same order; only the cross-process sums' order differs.
    np.testing.assert_allclose([g[k] for k in terms], [w[k] for k in terms], rtol=1e-5,
                               atol=1e-6, err_msg=f"step {w['step']}: {terms}")
  assert len({w["loss"] for w in want}) == 4


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
