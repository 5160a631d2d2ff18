r"""The paper's ablation table at small scale, on the bundled digits.

  python -m experiments.ablation --workdir=/tmp/mdm_ablation [--steps=N]

Trains the full model and each ablation (``no_selection``: dt, B, C input-independent;
``one_direction``: every layer scans forward; ``sedd_score``: SEDD's free log-score form instead
of the softmax form; ``markov``: D3PM/DDPM instead of score entropy)
with the same budget (steps, batch) and seed, evaluates each with ``experiments.evaluate``, and
prints a markdown table (also written to ``WORKDIR/ablation.json``). A variant whose workdir
already holds a finished run is only re-evaluated.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "One sub-folder per variant goes here.", required=True)
flags.DEFINE_integer("steps", None, "Training steps of every variant (the same budget); "
                     "default: the digits config's total_steps.")
flags.DEFINE_list("variants", ["digits", "no_selection", "one_direction", "sedd_score", "markov"],
                  "Configs to compare; the first is the full model.")
flags.DEFINE_integer("per_class", 30, "class2img samples per class for the metrics.")

LABELS = {"digits": "MDM (full: selection, 4 directions, score entropy)",
          "no_selection": "w/o selection", "one_direction": "1 scan direction",
          "sedd_score": "SEDD's free log-score form (not a softmax)",
          "markov": "Markov chain (D3PM + DDPM) instead of score entropy"}
# (eval.json key, column header), in table order.
COLUMNS = (("fid_digits", "FID (digits features)"), ("class_accuracy", "class acc."),
           ("t2i_accuracy", "t2i acc."), ("joint_consistency", "joint consist."),
           ("caption_accuracy", "caption acc."), ("vqa_accuracy", "VQA acc. (greedy)"),
           ("vqa_accuracy_sampled", "VQA acc. (sampled)"), ("cider_d", "CIDEr-D"))
METRICS = tuple(key for key, _ in COLUMNS)


def main(argv):
  del argv
  from experiments.evaluate import evaluate
  from experiments.configs import digits
  steps = FLAGS.steps or digits.get_config().total_steps
  rows = {}
  for name in FLAGS.variants:
    wd = os.path.join(FLAGS.workdir, name)
    done = os.path.isdir(os.path.join(wd, "checkpoints", str(steps)))
    if not done:
      cmd = [sys.executable, "-m", "experiments.train", f"--config={name}", f"--workdir={wd}",
             f"--config.total_steps={steps}"]
      print(" ".join(cmd), flush=True)
      subprocess.run(cmd, check=True)
    rows[name] = evaluate(wd, per_class=FLAGS.per_class)
    print(name, {k: rows[name].get(k) for k in METRICS}, flush=True)
  with open(os.path.join(FLAGS.workdir, "ablation.json"), "w") as f:
    json.dump(rows, f, indent=1)
  print(f"\n{steps} steps each, batch and seed of the digits config.")
  print("| variant | " + " | ".join(header for _, header in COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for name, r in rows.items():
    cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-" for k in METRICS]
    print(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
