"""`experiments.evaluate` on a clip model's workdir (`video_tiny`, 3 steps, trained by the CLI on
one device: the conftest's `video_workdir`, shared with tests/test_api_video.py): it prints and
writes the video metrics, each a count over the clips it made; and `experiments.sample
--format=adm` refuses the clip workdir before any work.

The evaluation samples in batches of the config's ``sample.num`` (8), the shapes of the
training run's final samples, so most of its programs are read back from the compilation
cache; text likelihood (no video in it) is left out, and greedy text is the config's, so VQA is
decoded once."""
from __future__ import annotations

import json

import numpy as np
import pytest

from subproc import run_module

PER_CLASS, HELDOUT, BATCH = 1, 8, 8
TASKS = "class2img,t2i,caption,vqa,joint,predict,interpolate"


@pytest.fixture(scope="module")
def evaluated(video_workdir):
  proc = run_module("experiments.evaluate", f"--workdir={video_workdir}",
                    f"--per_class={PER_CLASS}", f"--num_heldout={HELDOUT}", f"--batch={BATCH}",
                    f"--tasks={TASKS}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(video_workdir / "eval.json") as f:
    return json.load(f), proc.stdout


def _count(value, n):
  """``value`` is a fraction of ``n`` things."""
  return 0.0 <= value <= 1.0 and abs(value * n - round(value * n)) < 1e-6


def test_evaluate_writes_the_video_metrics(evaluated):
  saved, table = evaluated
  assert saved["step"] == 3 and saved["config"] == "moving_digits"
  n_class, n_joint = 10 * PER_CLASS, 10 * PER_CLASS
  counts = {"class2video_digit_accuracy": n_class, "class2video_consistency": n_class,
            "class2video_moving": n_class,
            "t2v_digit_accuracy": HELDOUT, "t2v_direction_accuracy": HELDOUT,
            "t2v_accuracy": HELDOUT, "t2v_consistency": HELDOUT,
            "video_joint_consistency": n_joint, "video_joint_digit_consistency": n_joint,
            "video_joint_direction_consistency": n_joint,
            "caption_accuracy": HELDOUT, "caption_digit_accuracy": HELDOUT,
            "caption_direction_accuracy": HELDOUT, "vqa_accuracy": HELDOUT,
            "predict_direction_accuracy": HELDOUT, "interpolate_direction_accuracy": HELDOUT}
  for key, n in counts.items():
    assert _count(saved[key], n), (key, saved[key])
  assert saved["t2v_accuracy"] <= min(saved["t2v_digit_accuracy"],
                                      saved["t2v_direction_accuracy"])
  for task in ("predict", "interpolate"):
    assert 0.0 < saved[f"{task}_mse"] <= 1.0
    np.testing.assert_allclose(saved[f"{task}_psnr"], -10 * np.log10(saved[f"{task}_mse"]),
                               rtol=0.5)   # the mean of per-clip PSNRs, near that of the MSE
  assert np.isfinite(saved["bleu4"]) and np.isfinite(saved["cider_d"])
  assert len(saved["video_joint_examples"]) == 10
  assert {"read_as", "moving", "text"} == set(saved["video_joint_examples"][0])
  # Held-out clips ask the video questions too (8 held-out clips: the first 8 question types).
  assert "which way does the digit move?" in saved["vqa_accuracy_by_question"]
  for key in counts:
    assert f"| {key} | {saved[key]:.4f} |" in table
  # The image-only metrics are not computed on clips; text likelihood was not asked for.
  for key in ("class_accuracy", "fid_digits", "t2i_accuracy", "joint_consistency",
              "text_perplexity", "vqa_accuracy_sampled"):
    assert key not in saved


def test_sample_refuses_the_adm_format_for_a_clip_workdir(video_workdir, tmp_path):
  out = tmp_path / "adm.npz"
  proc = run_module("experiments.sample", f"--workdir={video_workdir}", "--task=class2video",
                    "--format=adm", f"--out={out}")
  assert proc.returncode != 0
  assert "--format=adm writes ADM's image batch" in proc.stderr
  assert "model.frames=4" in proc.stderr and "Pass --format=npz" in proc.stderr
  assert list(tmp_path.iterdir()) == []   # refused before any work: no shards, no lock
