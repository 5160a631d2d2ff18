"""The training system end to end: 8 devices == 1 device, exact resume after SIGKILL, and the
sample command on the trained workdir.

The subprocess runs use the `tiny` config on one CPU device and the run's persistent XLA
compilation cache: the first run compiles (~50 s of CPU; it starts at once and runs while the
in-process 8-device test compiles), the others reuse its executables (~10 s each), and sampling
asks for the shapes that the training run's final samples compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from data import digits
from data import pipeline
from data import text_templates
from data import tokenizer as tokenizer_lib
from experiments import configs
from mdm_jax.training import sharding
from mdm_jax.training.trainer import Trainer
import subproc

TINY_RUN = ["--config=tiny", "--config.total_steps=6", "--config.checkpoint_every=3",
            "--config.log_every=1"]
NOT_LOSS_TERMS = ("step", "steps_per_s")


def start(module: str, args: list[str], log_path) -> subprocess.Popen:
  """`python -m module args` from the repo root on one CPU device (the conftest's 8 fake devices
  would only slow the subprocesses), stdout+stderr to a file (no pipe stalls)."""
  log = open(log_path, "w")
  proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=subproc.REPO,
                          env=subproc.env(), stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log_path = log_path
  proc.log_file = log
  return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
  try:
    rc = subproc.wait(proc, proc.log_path)
  finally:
    proc.log_file.close()
  with open(proc.log_path) as f:
    return rc, f.read()


def read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def loss_terms(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in NOT_LOSS_TERMS}


# ----------------------------------------------------------------------------- 8 devices
def _three_batches(config):
  tok = tokenizer_lib.Tokenizer.train(digits.text_corpus(), None, config.data.vocab_size)
  dc = config.data
  it = pipeline.make_dataset("digits", split="train", batch_size=config.batch_size,
                             image_size=dc.image_size, channels=dc.channels,
                             max_text_len=dc.max_text_len, tokenizer=tok, seed=0)
  return tok.vocab_size, [next(it) for _ in range(3)]


def _train_three_steps(config, mesh, vocab_size, batches):
  trainer = Trainer(config, mesh, vocab_size=vocab_size, num_classes=10)
  state = trainer.init_state()
  losses, sharded = [], []
  for batch in batches:
    batch = sharding.shard_batch(batch, mesh, trainer.rules)
    sharded.append(batch)
    with trainer.mesh_context():
      state, terms = trainer.train_step(state, batch)
    losses.append({k: float(v) for k, v in jax.device_get(terms).items()})
  return losses, state, sharded


def test_eight_devices_fsdp_match_one_device(run_a):
  """data=2 x fsdp=4 over 8 fake devices: the batch is split 8 ways and the parameters over
  fsdp (a stricter case than pure data parallelism, where they are replicated).

  (`run_a` only starts the subprocess run of the next test, to use the idle core.)"""
  del run_a
  assert jax.device_count() == 8
  config = configs.load("tiny")
  vocab_size, batches = _three_batches(config)
  one = sharding.make_mesh(devices=jax.devices()[:1])
  eight = sharding.make_mesh(data=2, fsdp=4)
  want, _, _ = _train_three_steps(config, one, vocab_size, batches)
  got, state, sharded = _train_three_steps(config, eight, vocab_size, batches)
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert len({w["loss"] for w in want}) == 3        # three different batches, three losses

  batch = sharded[0]
  assert batch["image"].sharding.shard_shape(batch["image"].shape)[0] == config.batch_size // 8
  assert len(batch["image"].sharding.device_set) == 8
  params = jax.tree.leaves(state["params"])
  assert all(len(p.sharding.device_set) == 8 for p in params)
  split = [p for p in params if p.sharding.shard_shape(p.shape) != p.shape]
  split_size = sum(p.size for p in split)
  # Most of the weights (every matrix with a 4-divisible embed dim) are split over fsdp=4.
  assert split_size > 0.5 * sum(p.size for p in params)
  for p in split:
    assert int(np.prod(p.sharding.shard_shape(p.shape))) * 4 == p.size


# ----------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  """Starts run A (uninterrupted) in the background; `runs` waits for it."""
  root = tmp_path_factory.mktemp("train")
  proc = start("experiments.train", [*TINY_RUN, f"--workdir={root / 'a'}"], root / "a.log")
  yield root, proc
  if proc.poll() is None:
    proc.kill()
    finish(proc)


# Run C: no periodic checkpoint before the last step, so only the preemption save can resume it.
PREEMPTED_RUN = [*TINY_RUN, "--config.checkpoint_every=6"]


@pytest.fixture(scope="module")
def runs(run_a):
  """Run A; run B: SIGKILLed after step 4, then the same command again; run C: SIGTERMed after
  step 4 (a real signal, which the process sends itself: the steps are too quick to hit one from
  outside), then the same command again. B and C run side by side."""
  root, a = run_a
  a_dir, b_dir, c_dir = root / "a", root / "b", root / "c"
  a_rc, a_log = finish(a)      # B and C start after A so that they find its compiled executables

  def train(args, workdir, log):
    return start("experiments.train", [*args, f"--workdir={workdir}"], root / log)

  b1 = train([*TINY_RUN, "--kill_at_step=4"], b_dir, "b1.log")
  c1 = train([*PREEMPTED_RUN, "--signal_at_step=4"], c_dir, "c1.log")
  c1_rc, c1_log = finish(c1)
  c1_exit = time.time()
  b1_rc, b1_log = finish(b1)
  b1_metrics = read_metrics(b_dir) if b1_rc == -9 else None
  c1_metrics = read_metrics(c_dir) if c1_rc == 0 else None
  c1_checkpoints = sorted(os.listdir(c_dir / "checkpoints"))
  c1_lock_left = os.path.exists(c_dir / "trainer.lock")
  b2, c2 = train(TINY_RUN, b_dir, "b2.log"), train(PREEMPTED_RUN, c_dir, "c2.log")
  (b2_rc, b2_log), (c2_rc, c2_log) = finish(b2), finish(c2)
  return dict(a_dir=a_dir, b_dir=b_dir, a_rc=a_rc, a_log=a_log, b1_rc=b1_rc, b1_log=b1_log,
              b1_metrics=b1_metrics, b2_rc=b2_rc, b2_log=b2_log, c_dir=c_dir, c1_rc=c1_rc,
              c1_log=c1_log, c1_exit=c1_exit, c1_metrics=c1_metrics,
              c1_checkpoints=c1_checkpoints, c1_lock_left=c1_lock_left, c2_rc=c2_rc,
              c2_log=c2_log)


def test_killed_run_resumes_exactly(runs):
  assert runs["a_rc"] == 0, runs["a_log"][-3000:]
  assert runs["b1_rc"] == -9, runs["b1_log"][-3000:]   # killed by its own SIGKILL
  assert runs["b2_rc"] == 0, runs["b2_log"][-3000:]
  a = read_metrics(runs["a_dir"])
  assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
  # The killed process logged steps 1-4 (checkpoint at 3), then died.
  assert [r["step"] for r in runs["b1_metrics"]] == [1, 2, 3, 4]
  # The resumed run continues the log from the checkpoint: step 4 is not repeated.
  b = read_metrics(runs["b_dir"])
  assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
  assert "Resumed from the checkpoint at step 3" in runs["b2_log"]
  assert "Taking over the stale trainer lock" in runs["b2_log"]  # the killed run held it
  assert "Resumed" not in runs["b1_log"] and "Started from scratch" in runs["b1_log"]
  terms = loss_terms(a[0])
  assert {"loss", "diff_img", "diff_txt", "rec_img", "rec_txt", "kl"} <= set(terms)
  assert all(np.isfinite(v) for r in a for v in loss_terms(r).values())
  # Exact equality: same data position, rng, optimizer state and parameters after the restart.
  for got, want in zip(b, a):
    assert loss_terms(got) == loss_terms(want), (got["step"], got, want)
  for run_dir in (runs["a_dir"], runs["b_dir"]):
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["3", "6"]
    assert os.path.exists(run_dir / "tokenizer.model")
    assert os.path.exists(run_dir / "samples" / "class2img_final.png")


def _log_time(log: str, text: str) -> float:
  """The epoch time of the first absl log line containing `text` (local time, no year)."""
  line = next(l for l in log.splitlines() if text in l)
  month_day, clock = line[1:5], line.split()[1]
  year = time.localtime().tm_year
  return time.mktime(time.strptime(f"{year}{month_day} {clock.split('.')[0]}", "%Y%m%d %H:%M:%S")
                     ) + float("0." + clock.split(".")[1])


def test_sigterm_saves_the_step_and_resumes_exactly(runs):
  assert runs["a_rc"] == 0, runs["a_log"][-3000:]
  log = runs["c1_log"]
  assert runs["c1_rc"] == 0, log[-3000:]   # a clean exit, not 143
  assert "Preempted (SIGTERM): saved the checkpoint of step 4 and stopped" in log, log[-3000:]
  assert "Wrote " not in log  # no final samples: the notice leaves no time for them
  assert runs["c1_checkpoints"] == ["4"]  # the preemption save alone (no periodic one was due)
  assert not runs["c1_lock_left"]
  assert [r["step"] for r in runs["c1_metrics"]] == [1, 2, 3, 4]
  # Between the notice and the exit, only step 4's save: no further step and no final samples
  # (what keeps it inside a notice's ~30 s; the time itself is the machine's, only printed).
  after = log[log.index("SIGTERM received"):]
  assert log.index("step 4/6") < log.index("SIGTERM received")
  assert "step 5/6" not in log and "Training done" not in after, after[-3000:]
  seconds = runs["c1_exit"] - _log_time(log, "SIGTERM received")
  print(f"\npreemption: steps reached 4, step saved 4, {seconds:.1f}s from SIGTERM to exit")
  assert seconds >= 0, seconds

  assert runs["c2_rc"] == 0, runs["c2_log"][-3000:]
  assert "Resumed from the checkpoint at step 4" in runs["c2_log"]
  assert "stale trainer lock" not in runs["c2_log"]  # the preempted run released it
  # Oracle: the uninterrupted run A. Exact equality: same data position, rng and state.
  a, c = read_metrics(runs["a_dir"]), read_metrics(runs["c_dir"])
  assert [r["step"] for r in c] == [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
  for got, want in zip(c, a):
    assert loss_terms(got) == loss_terms(want), (got["step"], got, want)
  assert sorted(os.listdir(runs["c_dir"] / "checkpoints")) == ["4", "6"]


# A full disk during the (asynchronous) save of step 4: orbax's JSON writer raises ENOSPC, as
# a real full disk does, inside the real command.
# The JSON items of step 4's save fail at once while its arrays are still being written (slowed
# by 2 s): orbax reports the first failure while the array writers run on, as on a real disk.
DISK_FULL_AT_STEP_4 = """
import asyncio, errno, sys
from absl import app
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
from orbax.checkpoint._src.serialization import jax_array_handlers as arrays
from experiments import configs, train
write = handler.JsonCheckpointHandler._save_fn
async def full(self, item, directory):
  if "/checkpoints/4." in str(directory):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory / self._filename))
  return await write(self, item, directory)
handler.JsonCheckpointHandler._save_fn = full
write_arrays = arrays._async_serialize_replica_slices
async def slow(*args, **kwargs):
  await asyncio.sleep(2)
  return await write_arrays(*args, **kwargs)
arrays._async_serialize_replica_slices = slow
sys.argv = configs.rewrite_argv(["train", *sys.argv[1:]])
train.define_flags()
app.run(train.main)
"""


def test_disk_full_during_a_save_is_reported_once_and_the_run_resumes(runs, tmp_path):
  assert runs["a_rc"] == 0   # its compiled executables make these runs quick
  workdir = tmp_path / "full"
  args = [*TINY_RUN, "--config.checkpoint_every=2", f"--workdir={workdir}"]
  with open(tmp_path / "full.log", "w") as log:
    rc = subprocess.run([sys.executable, "-c", DISK_FULL_AT_STEP_4, *args], cwd=subproc.REPO,
                        env=subproc.env(), stdout=log, stderr=subprocess.STDOUT,
                        timeout=subproc.HANG_TIMEOUT_S).returncode
  log = (tmp_path / "full.log").read_text()
  assert rc == 1, log[-3000:]
  report = "Writing the checkpoint of step 4 failed: [Errno 28] No space left on device ("
  assert log.count(report) == 1, log[-3000:]
  line = next(l for l in log.splitlines() if report in l)
  assert f"{workdir}/checkpoints/4.orbax-checkpoint-tmp" in line
  assert "MiB for the state's arrays" in line and "MiB free there now" in line
  assert "The previous checkpoint (step 2) is intact" in line
  assert "Traceback" not in log   # orbax's background tracebacks are not repeated either
  assert not os.path.exists(workdir / "trainer.lock")
  assert not os.path.exists(workdir / "samples")
  # The same command without the fault resumes from step 2 and matches run A exactly.
  rc, log = finish(start("experiments.train", args, tmp_path / "rerun.log"))
  assert rc == 0, log[-3000:]
  assert "Resumed from the checkpoint at step 2" in log
  a, got = read_metrics(runs["a_dir"]), read_metrics(workdir)
  assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
  for g, w in zip(got, a):
    assert loss_terms(g) == loss_terms(w), (g["step"], g, w)


# ----------------------------------------------------------------------------- sample / evaluate
NUM = 10   # the tiny config's sample.num: the training run's final samples compiled these shapes


@pytest.fixture(scope="module")
def cli_outputs(runs, tmp_path_factory):
  """The four sample tasks, in parallel, on the resumed workdir."""
  assert runs["b2_rc"] == 0, runs["b2_log"][-3000:]
  assert configs.load("tiny").sample.num == NUM
  out = tmp_path_factory.mktemp("cli")
  workdir = str(runs["b_dir"])
  greedy = {"vqa": ["--temperature=0"]}  # the flag's semantics: tests/test_samplers.py
  procs = {task: start("experiments.sample", [f"--workdir={workdir}", f"--task={task}",
                                              f"--num={NUM}", f"--out={out / task}",
                                              *greedy.get(task, [])],
                       out / f"{task}.log")
           for task in ("class", "caption", "vqa", "joint")}
  results = {name: finish(p) for name, p in procs.items()}
  results["evaluate"] = finish(start(
      "experiments.evaluate", [f"--workdir={workdir}", "--per_class=2", "--num_heldout=10",
                               "--batch=10"], out / "evaluate.log"))
  return out, results


def _ok(cli_outputs, name):
  rc, log = cli_outputs[1][name]
  assert rc == 0, log[-3000:]


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _heldout_labels(n):
  _, labels = digits.load("test")
  return [int(l) for l in labels[:n]]


def _grid_size(n, size=8, pad=1, upscale=4):
  """(width, height) of save_grid's PNG: ceil(sqrt(n)) images a row, 1-pixel gaps."""
  per_row = int(np.ceil(np.sqrt(n)))
  rows = -(-n // per_row)
  return (pad + per_row * (size + pad)) * upscale, (pad + rows * (size + pad)) * upscale


def test_sample_class(cli_outputs):
  _ok(cli_outputs, "class")
  out = cli_outputs[0]
  with np.load(out / "class.npz") as f:
    assert f["images"].dtype == np.uint8 and f["images"].shape == (NUM, 8, 8, 1)
    np.testing.assert_array_equal(f["labels"], np.arange(NUM) % 10)
  assert Image.open(out / "class.png").size == _grid_size(NUM)


def _heldout_task_rows(cli_outputs, task):
  """The task's jsonl rows, checked to cover the first NUM held-out examples in order with a
  generated text each."""
  _ok(cli_outputs, task)
  rows = _rows(cli_outputs[0] / f"{task}.jsonl")
  assert [r["index"] for r in rows] == list(range(NUM))
  assert [r["label"] for r in rows] == _heldout_labels(NUM)
  assert all(isinstance(r["text"], str) for r in rows)
  return rows


def test_sample_caption(cli_outputs):
  for r in _heldout_task_rows(cli_outputs, "caption"):
    assert r["reference"] in text_templates.digit_captions(r["label"])


def test_sample_vqa(cli_outputs):
  rows = _heldout_task_rows(cli_outputs, "vqa")
  for r in rows:
    assert (r["question"], r["reference"]) in text_templates.digit_qa(r["label"])
  assert len({r["question"] for r in rows}) > 1     # the question types are cycled through


def test_sample_joint(cli_outputs):
  _ok(cli_outputs, "joint")
  out = cli_outputs[0]
  with np.load(out / "joint.npz") as f:
    assert f["images"].dtype == np.uint8 and f["images"].shape == (NUM, 8, 8, 1)
  assert Image.open(out / "joint.png").size == _grid_size(NUM)
  rows = _rows(out / "joint.jsonl")
  assert [r["index"] for r in rows] == list(range(NUM))
  assert all(isinstance(r["text"], str) and r["label"] is None for r in rows)


def test_evaluate(cli_outputs, runs):
  _ok(cli_outputs, "evaluate")
  with open(runs["b_dir"] / "eval.json") as f:
    result = json.load(f)
  assert result["step"] == 6
  # 2 per class x 10 classes, and 10 held-out images: accuracies are counts over those.
  # Greedy captions and answers, and sampled ones beside them.
  assert result["caption_temperature"] == 0.0 and result["vqa_temperature"] == 0.0
  for key, n in (("class_accuracy", 20), ("caption_accuracy", 10),
                 ("caption_accuracy_sampled", 10), ("vqa_accuracy", 10),
                 ("vqa_accuracy_sampled", 10), ("t2i_accuracy", 10),
                 ("t2i_accuracy_templates", 100), ("joint_consistency", 20)):
    assert 0.0 <= result[key] <= 1.0
    assert abs(result[key] * n - round(result[key] * n)) < 1e-6, (key, result[key])
  assert [r["label"] for r in result["caption_examples"]] == _heldout_labels(10)
  # The 10 questions cycle through the 8 templates: one score per template, each a count.
  by_question = result["vqa_accuracy_by_question"]
  assert sorted(by_question) == sorted(q for q, _ in text_templates.DIGIT_QA_TEMPLATES)
  assert all(0.0 <= v <= 1.0 and (2 * v) % 1 == 0 for v in by_question.values())
  assert np.isfinite(result["diversity"]) and result["diversity"] >= 0.0
