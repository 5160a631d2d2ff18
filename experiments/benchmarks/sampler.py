"""``bench sampler --workdir=DIR``: image sampler and steps against class accuracy and FID on a
trained digits run (class-to-image, 20 samples per class, through ``experiments.evaluate``)."""
from __future__ import annotations

from absl import app, flags

from experiments.benchmarks.common import machine, print_markdown

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "sampler: a trained digits workdir.")


def bench_sampler():
  """Sampler steps against class-conditional quality on a trained digits workdir."""
  from experiments.evaluate import evaluate
  if not FLAGS.workdir:
    raise app.UsageError("bench sampler needs --workdir of a trained digits run")
  # (solver, grid steps): DPM-Solver-2 takes two network evaluations per step, so 5/10/25
  # steps are its 10/20/50 evaluations; every setting adds one final denoising evaluation.
  settings = [("dpm2", 5), ("dpm2", 10), ("dpm2", 25), ("dpm++2m", 10), ("dpm++2m", 20),
              ("dpm++2m", 50), ("ddpm", 250), ("ddpm", 1000)]
  rows = []
  for solver, steps in settings:
    r = evaluate(FLAGS.workdir, per_class=20, tasks=("class2img",), write=False,
                 overrides={"sample.image_solver": solver, "sample.steps": steps})
    rows.append((solver, steps, r))
    print(f"  {solver} {steps}: {r.get('class_accuracy')}, {r.get('fid_digits')}", flush=True)
  print(f"\nclass2img on digits (200 samples, guidance from the config); {machine()}")
  table = []
  for solver, steps, r in rows:
    nfe = (2 if solver == "dpm2" else 1) * steps + 1
    table.append([solver, str(steps), f"{nfe} (x2 with guidance)", f"{r['class_accuracy']:.3f}",
                  f"{r['fid_digits']:.3f}", f"{r['class2img_seconds']:.1f}"])
  print_markdown(["image sampler", "steps", "network evaluations", "class accuracy",
                  "FID (digits features)", "seconds"], table)
