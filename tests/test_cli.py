"""`python -m experiments.train` from the command line: a short run on a prepared image folder
(converted images and truncated captions are counted), clear errors for bad input, and
--dry_run on 8 fake devices (started first, in the background: it compiles for ~40 s)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from experiments import configs
from mdm_jax.models.mdm import MDM
from mdm_jax.training import trainer as trainer_lib
import subproc
from subproc import run_module

# ----------------------------------------------------------------------------- folder data
LONG_WORDS = ("a photo of a small square drawn in one colour on a plain background with "
              "nothing else in it")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """12 images listed in captions.jsonl: 4 RGB, 2 RGBA, 6 grey; every caption long."""
  src = tmp_path_factory.mktemp("src")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(12):
    if i < 4:
      img = Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8), "RGB")
    elif i < 6:
      img = Image.fromarray(rng.integers(0, 255, (10, 10, 4), dtype=np.uint8), "RGBA")
    else:
      img = Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8), "L")
    img.save(src / f"im{i:02d}.png")
    rows.append({"file": f"im{i:02d}.png", "caption": f"{LONG_WORDS} number {i}",
                 "label": ["cat", "dog"][i % 2]})
  (src / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return src


def test_train_on_prepared_folder_counts_conversions_and_truncations(image_folder, tmp_path,
                                                                    dry_run):
  del dry_run  # only started here, to run alongside
  out, workdir = tmp_path / "prepared", tmp_path / "run"
  prep = run_module("data.prepare", f"--src={image_folder}", f"--out={out}", "--channels=1",
                    "--image_size=8")
  assert prep.returncode == 0, prep.stderr[-3000:]
  stats = json.loads(prep.stdout)
  assert stats["images"] == 12 and stats["num_classes"] == 2
  assert stats["converted"] == 6 and stats["converted_from"] == {"RGB": 4, "RGBA": 2}

  max_text_len, batch = 12, 8
  # SentencePiece never joins words, so each caption has >= its word count of tokens.
  assert len(LONG_WORDS.split()) >= max_text_len
  proc = run_module("experiments.train", "--config=tiny", f"--workdir={workdir}",
                    "--config.data.name=folder", f"--config.data.data_dir={out}",
                    "--config.data.channels=1", f"--config.data.max_text_len={max_text_len}",
                    "--config.total_steps=3", "--config.log_every=1",
                    f"--config.batch_size={batch}", "--kill_at_step=3")
  # Stopped by its own SIGKILL after step 3's checkpoint: what is checked is the data's path
  # into training; the final samples (a 2-class model's programs, compiled nowhere else) are
  # skipped.
  assert proc.returncode == -9, proc.stderr[-3000:]
  # Every caption is too long: the first batch truncates all of its captions, counted.
  assert re.search(rf"{batch} caption texts truncated to max_text_len so far \(of {batch} "
                   r"examples\)", proc.stderr), proc.stderr[-3000:]
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) for r in records)
  # A folder has no VQA pairs: that task is never trained.
  assert all(r["task/vqa"] == 0.0 for r in records)


# ----------------------------------------------------------------------------- bad input
BAD_INPUT = {
    "unknown_config": (["--config=nope", "--workdir={tmp}/w"],
                       [r"unknown config 'nope'", "digits", "imagenet256", "tiny"]),
    "unknown_field": (["--config=tiny", "--workdir={tmp}/w", "--config.model.nonexistent=1"],
                      [r"unknown config field 'model\.nonexistent'", r"Fields there: .*d_model"]),
    "unknown_field_of_default": (["--workdir={tmp}/w", "--config.foo.bar=1"],
                                 [r"unknown config field 'foo\.bar'", r"config 'digits'",
                                  r"Fields there: .*total_steps"]),
    "config_file_typo": (["--config={tmp}/typo.py", "--workdir={tmp}/w"],
                         [r"typo\.py' sets fields no run reads: 'optim\.learning_rate' \(did "
                          r"you mean 'optim\.lr'", r"optim has .*warmup_steps"]),
    "config_file_plain_dict": (["--config={tmp}/plain.py", "--workdir={tmp}/w"],
                               [r"get_config\(\) in .*plain\.py returned a dict, not an "
                                r"ml_collections\.ConfigDict"]),
    "wrong_type": (["--config=tiny", "--workdir={tmp}/w", "--config.total_steps=abc"],
                   [r"config\.total_steps", "abc"]),
    "no_workdir": (["--config=tiny"], [r"--workdir is required"]),
    # Without --config the default (digits) is loaded, so its fields can be overridden.
    "default_config": (["--workdir={tmp}/w", "--config.total_steps=abc"],
                       [r"config\.total_steps", "abc"]),
    "folder_without_data_dir": (["--config=tiny", "--workdir={tmp}/w",
                                 "--config.data.name=folder"],
                                [r"No prepared image folder", r"python -m data\.prepare"]),
    "folder_empty": (["--config=tiny", "--workdir={tmp}/w", "--config.data.name=folder",
                      "--config.data.data_dir={tmp}/empty"],
                     [r"No prepared image folder at '.*empty'", r"python -m data\.prepare"]),
    "folder_missing": (["--config=tiny", "--workdir={tmp}/w", "--config.data.name=folder",
                        "--config.data.data_dir={tmp}/missing"],
                       [r"No prepared image folder at '.*missing'"]),
    "zero_intervals": (["--config=tiny", "--workdir={tmp}/w", "--config.log_every=0",
                        "--config.checkpoint_every=0"],
                       [r"log_every=0 \(must be an integer >= 1\)",
                        r"checkpoint_every=0 \(must be an integer >= 1\)"]),
    "workdir_in_use": (["--config=tiny", "--workdir={tmp}/locked"],
                       [r"already being trained by pid \d+ on host", r"another --workdir"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_with_a_clear_message(case, tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "locked").mkdir()  # held by a live trainer: this test process
  (tmp_path / "typo.py").write_text("from experiments.configs import tiny\n\n\ndef get_config():"
                                    "\n  c = tiny.get_config()\n  c.optim.learning_rate = 1e-3"
                                    "\n  return c\n")
  (tmp_path / "plain.py").write_text("def get_config():\n  return {'total_steps': 3}\n")
  (tmp_path / "locked" / "trainer.lock").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": os.getpid(), "started": "now"}))
  args, patterns = BAD_INPUT[case]
  proc = run_module("experiments.train", *(a.format(tmp=tmp_path) for a in args))
  assert proc.returncode != 0
  for pattern in patterns:
    assert re.search(pattern, proc.stderr), (pattern, proc.stderr[-2000:])
  # Nothing was trained: no checkpoint was written.
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
  assert not os.path.exists(tmp_path / "locked" / "checkpoints")


# ----------------------------------------------------------------------------- dry run
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  """Starts the dry run (~40 s of compilation) in the background: the folder test starts it
  and runs alongside, `test_dry_run_on_eight_devices` collects it."""
  root = tmp_path_factory.mktemp("dry_run")
  out, err = root / "stdout.log", root / "stderr.log"
  with open(out, "w") as out_f, open(err, "w") as err_f:
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "--config=tiny", "--dry_run",
         "--dry_run_devices=8", "--config.mesh.data=2", "--config.mesh.fsdp=2",
         "--config.mesh.tensor=2"],
        cwd=subproc.REPO, env=subproc.env(8), stdout=out_f, stderr=err_f, text=True)
  yield proc, out, err
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_dry_run_on_eight_devices(dry_run):
  proc, out_log, err_log = dry_run
  assert subproc.wait(proc, err_log) == 0, err_log.read_text()[-3000:]
  out = out_log.read_text()
  # Independent count: initialise the model for real and add up the parameter sizes.
  mc = trainer_lib.model_config(configs.load("tiny"))
  variables = MDM(mc).init(jax.random.PRNGKey(0), jnp.zeros(
      (1, mc.image_size, mc.image_size, mc.channels)), jnp.zeros((1, mc.max_text_len), jnp.int32))
  leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  total = sum(int(np.size(x)) for _, x in leaves)
  rows = dict(re.findall(r"^(\S+)\s+([\d,]+)\s+\(", out, re.M))
  assert int(rows["total"].replace(",", "")) == total
  by_module = {}
  for path, x in leaves:
    key = "/".join(str(k.key) for k in path[:2])
    by_module[key] = by_module.get(key, 0) + int(np.size(x))
  assert {k: int(v.replace(",", "")) for k, v in rows.items() if k != "total"} == by_module
  assert "Compiled the train step for 8 devices" in out
  assert "'data': 2, 'fsdp': 2, 'tensor': 2" in out
  memory = out[out.index("Per-device memory:"):]
  for row in ("params", "ema", "optimizer state", "activations/temporaries (compiled)",
              "peak estimate"):
    assert re.search(rf"^\s+{re.escape(row)}.*\s[\d.]+ (GiB|MiB)$", memory, re.M), row
  # The TPU lowering with the compiled Mosaic kernels: each kernel call takes one device's
  # batch rows (16 / (data 2 x fsdp 2)) and heads (d_inner 64 / headdim 16 = 4, / tensor 2),
  # i.e. the kernel runs inside the shard_map, not on gathered global arrays.
  assert re.search(r"^Lowered the train step for TPU with the Pallas Mosaic kernels in \d+s",
                   out, re.M), out[-2000:]
  kernels = dict(re.findall(r"^\s+(ssd_\w+_tpu): per-device x .* = \((\d+, \d+),", out, re.M))
  assert kernels == {"ssd_fwd_tpu": "4, 2", "ssd_bwd_tpu": "4, 2"}, out[-2000:]
