"""experiments.evaluate's checks before any work (options, input files, the output folder) and
eval.json's safe writing (atomic, an unreadable one set aside), without a model; the checks that
need a trained run, a read-only workdir and the table printed before the write are in
tests/test_api.py. Also experiments.sample's output lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from experiments import evaluate as ev
from experiments import sample_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("change,match", [
    (dict(tasks=("class2img", "vqa2")), "unknown --tasks .'vqa2'.; choose from class2img,"),
    (dict(per_class=0), "--per_class=0 must be >= 1"),
    (dict(batch=0), "--batch=0 must be >= 1"),
    (dict(text_draws=0), "--text_draws=0 must be >= 1"),
    (dict(num_heldout=0), "--num_heldout=0 must be >= 1"),
    (dict(caption_temperature=-0.5), "--caption_temperature=-0.5 must be >= 0"),
    (dict(vqa_temperature=-1.0), "--vqa_temperature=-1.0 must be >= 0"),
    (dict(ref_batch="r.npz", ref_split="test", inception_weights="w.npz"), "not both"),
    (dict(ref_split="test"), "--inception_weights goes with --ref_batch or --ref_split"),
    (dict(inception_weights="w.npz"), "--inception_weights goes with"),
    (dict(samples="s.npz"), "--samples is scored against --ref_batch or --ref_split"),
    (dict(ref_num=100), "--ref_num=100 counts the images of --ref_split; pass --ref_split"),
    (dict(ref_split="test", ref_num=3, inception_weights="w.npz"),
     r"--ref_num=3: precision / recall \(k=3\) need more than 3"),
    (dict(ref_split="test", inception_weights="w.npz", tasks=("caption",)),
     "nothing to score against the reference: pass --samples, or keep class2img"),
])
def test_option_combinations_that_cannot_work_are_refused(change, match):
  with pytest.raises(ev.EvaluateUsageError, match=match):
    ev.check_options(ev.Options(**change))


def test_the_default_options_and_a_reference_run_pass():
  ev.check_options(ev.Options())
  ev.check_options(ev.Options(ref_split="test", ref_num=4, inception_weights="w.npz", tasks=(),
                              samples="s.npz"))


def test_input_files_are_read_before_any_work(tmp_path):
  weights = tmp_path / "w.npz"
  np.savez(weights, nothing=np.zeros(3))
  with pytest.raises(ev.EvaluateUsageError, match=r"--inception_weights=.*w.npz.*fc.weight"):
    ev.check_files(inception_weights=str(weights), ref_batch=None, samples=None)
  with pytest.raises(ev.EvaluateUsageError, match="--inception_weights=.*does not exist"):
    ev.check_files(inception_weights=str(tmp_path / "none.npz"), ref_batch=None, samples=None)
  ref = tmp_path / "ref.npz"
  np.savez(ref, arr_0=np.zeros((8, 4, 4, 3), np.uint8))
  assert ev.check_files(inception_weights=None, ref_batch=str(ref), samples=str(ref)) is None
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(ref.read_bytes()[:200])
  with pytest.raises(ev.EvaluateUsageError, match="--samples=.*truncated.npz.*is not a readable "
                     ".npz.*truncated"):
    ev.check_files(inception_weights=None, ref_batch=str(ref), samples=str(truncated))
  with pytest.raises(ev.EvaluateUsageError, match="--ref_batch=.*missing.npz.*does not exist"):
    ev.check_files(inception_weights=None, ref_batch=str(tmp_path / "missing.npz"),
                   samples=None)
  floats = tmp_path / "floats.npz"
  np.savez(floats, images=np.zeros((8, 4, 4, 3), np.float32))
  with pytest.raises(ev.EvaluateUsageError, match="'images' must be uint8"):
    ev.check_files(inception_weights=None, ref_batch=str(ref), samples=str(floats))
  few = tmp_path / "few.npz"
  np.savez(few, arr_0=np.zeros((3, 4, 4, 3), np.uint8))
  with pytest.raises(ev.EvaluateUsageError, match=r"holds 3 images: precision / recall"):
    ev.check_files(inception_weights=None, ref_batch=str(few), samples=None)


def test_an_unwritable_output_folder_is_refused_naming_out_dir(tmp_path):
  # A folder under a regular file cannot be created, even by root.
  (tmp_path / "file").write_text("")
  with pytest.raises(ev.EvaluateUsageError, match=r"cannot write to .*file/out.*--out_dir="):
    ev.check_writable(tmp_path / "file" / "out")
  ev.check_writable(tmp_path / "new" / "out")              # created, the probe removed
  assert os.listdir(tmp_path / "new" / "out") == []


def test_eval_json_is_merged_and_written_whole(tmp_path):
  first = {"step": 6, "config": "digits", "per_class": 2, "class_accuracy": 0.5}
  ev.write_eval_json(tmp_path, first)
  ev.write_eval_json(tmp_path, {"step": 6, "config": "digits", "per_class": 2, "bleu4": 0.25})
  assert json.loads((tmp_path / "eval.json").read_text()) == {**first, "bleu4": 0.25}
  assert os.listdir(tmp_path) == ["eval.json"]             # no temporary file left


@pytest.mark.parametrize("text,problem", [('{"step": 6, "config": "dig', "is not valid JSON"),
                                          ("", "is not valid JSON"),
                                          ("[1, 2]", "holds a JSON list")])
def test_an_unreadable_eval_json_is_set_aside_with_a_warning(tmp_path, text, problem):
  from absl import logging as absl_logging
  (tmp_path / "eval.json").write_text(text)
  warnings = []
  original = absl_logging.warning
  absl_logging.warning = lambda fmt, *args: warnings.append(fmt % args)
  try:
    ev.write_eval_json(tmp_path, {"step": 6, "config": "digits", "bleu4": 0.25})
  finally:
    absl_logging.warning = original
  assert json.loads((tmp_path / "eval.json").read_text()) == {
      "step": 6, "config": "digits", "bleu4": 0.25}
  aside = [f for f in os.listdir(tmp_path) if f.startswith("eval.json.unreadable-")]
  assert len(aside) == 1 and (tmp_path / aside[0]).read_text() == text
  assert len(warnings) == 1 and problem in warnings[0] and aside[0] in warnings[0]


def test_eval_json_on_an_object_store(bucket):
  """gs://: written through epath (the temporary object renamed), read back from the store."""
  from test_workdir_io import _bytes
  ev.write_eval_json("gs://bucket/run", {"step": 6, "config": "digits", "fid": 1.5})
  ev.write_eval_json("gs://bucket/run", {"step": 6, "config": "digits", "bleu4": 0.5})
  assert json.loads(_bytes(bucket, "gs://bucket/run/eval.json")) == {
      "step": 6, "config": "digits", "fid": 1.5, "bleu4": 0.5}
  assert [k for k in bucket if "tmp" in k] == []


from test_workdir_io import bucket  # noqa: E402,F401  (the in-memory gs:// fixture)


# ----------------------------------------------------------------------------- sample's lock
_HOLD = """
import sys, time
from experiments import sample_io
lock = sample_io.OutputLock(sys.argv[1]); lock.acquire(); print("held", flush=True)
time.sleep(60)
"""


def test_the_output_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
  path = tmp_path / "out.lock"
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(sample_io.OutputLockedError,
                       match=f"another sampling process writes this output .*\"pid\": "
                             f"{holder.pid}.*pass another --out"):
      sample_io.OutputLock(path).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert path.exists()                   # a SIGKILL leaves the file, but not the lock
  with sample_io.OutputLock(path) as lock:
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(sample_io.OutputLockedError):
      sample_io.OutputLock(path).acquire()
  assert not path.exists()               # released: removed
  del lock
