r"""The paper's ablation table at small scale, on the bundled digits.

  python -m experiments.ablation --workdir=/tmp/mdm_ablation [--steps=N]

Trains the full model and each ablation (``no_selection``: dt, B, C input-independent;
``one_direction``: every layer scans forward; ``sedd_score``: SEDD's free log-score form instead
of the softmax form; ``markov``: D3PM/DDPM instead of score entropy)
with the same budget (steps, batch) and seed, evaluates each with ``experiments.evaluate``, and
prints a markdown table (also written to ``WORKDIR/ablation.json``). A variant whose workdir
already holds a finished run is not trained again, and one whose ``eval.json`` is newer than that
run's last checkpoint and has the same ``--per_class`` is not evaluated again either
(``--reevaluate`` does). ``--jobs=N`` trains and evaluates N variants at a time, each in its own
processes (for machines with more cores than one small run keeps busy).
"""
from __future__ import annotations

import json
import os
from concurrent import futures
import subprocess
import sys

from absl import app, flags

from experiments import allocator

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "One sub-folder per variant goes here.", required=True)
flags.DEFINE_integer("steps", None, "Training steps of every variant (the same budget); "
                     "default: the digits config's total_steps.")
flags.DEFINE_list("variants", ["digits", "no_selection", "one_direction", "sedd_score", "markov"],
                  "Configs to compare; the first is the full model.")
flags.DEFINE_integer("per_class", 30, "class2img samples per class for the metrics.")
flags.DEFINE_integer("jobs", 1, "Variants trained and evaluated at a time.")
flags.DEFINE_bool("reevaluate", False, "Evaluate again even where eval.json is newer than the run.")

LABELS = {"digits": "MDM (full: selection, 4 directions, score entropy)",
          "no_selection": "w/o selection", "one_direction": "1 scan direction",
          "sedd_score": "SEDD's free log-score form (not a softmax)",
          "markov": "Markov chain (D3PM + DDPM) instead of score entropy"}
# (eval.json key, column header), in table order.
COLUMNS = (("fid_digits", "FID (digits features)"), ("class_accuracy", "class acc."),
           ("t2i_accuracy", "t2i acc."), ("joint_consistency", "joint consist."),
           ("caption_accuracy", "caption acc. (greedy)"),
           ("caption_accuracy_sampled", "caption acc. (sampled)"),
           ("vqa_accuracy", "VQA acc. (greedy)"), ("vqa_accuracy_sampled", "VQA acc. (sampled)"),
           ("cider_d", "CIDEr-D"))
METRICS = tuple(key for key, _ in COLUMNS)


def _run_variant(name: str, steps: int) -> dict:
  """Trains variant `name` (unless finished) and evaluates it (unless its eval.json is newer
  than the final checkpoint and used the same ``--per_class``), each in a subprocess; returns
  its eval.json."""
  wd = os.path.join(FLAGS.workdir, name)
  final = os.path.join(wd, "checkpoints", str(steps))
  if not os.path.isdir(final):
    cmd = [sys.executable, "-m", "experiments.train", f"--config={name}", f"--workdir={wd}",
           f"--config.total_steps={steps}"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
  eval_json = os.path.join(wd, "eval.json")
  row = _read_json(eval_json) if os.path.exists(eval_json) else None
  if (FLAGS.reevaluate or row is None or os.path.getmtime(eval_json) < os.path.getmtime(final)
      or row.get("per_class") != FLAGS.per_class):
    cmd = [sys.executable, "-m", "experiments.evaluate", f"--workdir={wd}",
           f"--per_class={FLAGS.per_class}"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    row = _read_json(eval_json)
  print(name, {k: row.get(k) for k in METRICS}, flush=True)
  return row


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def main(argv):
  del argv
  from experiments.configs import digits
  steps = FLAGS.steps or digits.get_config().total_steps
  with futures.ThreadPoolExecutor(max(1, FLAGS.jobs)) as pool:
    done = {name: pool.submit(_run_variant, name, steps) for name in FLAGS.variants}
    rows = {name: job.result() for name, job in done.items()}
  with open(os.path.join(FLAGS.workdir, "ablation.json"), "w") as f:
    json.dump(rows, f, indent=1)
  print(f"\n{steps} steps each, batch and seed of the digits config.")
  print("| variant | " + " | ".join(header for _, header in COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for name, r in rows.items():
    cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-" for k in METRICS]
    print(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()  # XLA:CPU's steps, up to a third faster
  app.run(main)
