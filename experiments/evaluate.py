r"""Evaluate a trained workdir: sample what its trained tasks need, score them, print a table
and merge the scores into ``eval.json``.

  python -m experiments.evaluate --workdir=/tmp/mdm_digits

Each metric family is one evaluator of ``experiments.evaluators`` (each class's docstring
defines its keys), chosen by what the run and its data provide; this module is the driver:

  evaluator           runs when                                  eval.json keys
  class2img_samples   class2img trained, no --samples            class2img_seconds
  class_accuracy      ... and the data has a class reader        class_accuracy, fid_digits,
                      (digits: a classifier of its own)          is_digits, precision, recall,
                                                                 diversity
  t2i_accuracy        t2i trained, a class reader, captions      t2i_accuracy(_templates)
  joint_consistency   joint trained, a class reader              joint_consistency
  image_quality       --ref_batch or --ref_split                 fid, inception_score,
                                                                 precision/recall_inception
  captions            caption trained, held-out captions         bleu4, cider_d,
                                                                 caption_accuracy (a reader)
  vqa                 vqa trained, held-out questions            vqa_accuracy(_by_question)
  text_likelihood     text trained, held-out captions            text_bits_per_token,
                                                                 text_perplexity

A clip model's run (``model.frames`` > 1) on data with a clip reader (moving digits: the digits
classifier on each frame, the ink's centre-of-mass motion) gets, in place of the image readers':

  evaluator                runs when                        eval.json keys
  class2video_accuracy     class2img trained                class2video_digit_accuracy,
                                                            class2video_consistency,
                                                            class2video_moving
  t2v_accuracy             t2i trained, captions            t2v_digit_accuracy,
                                                            t2v_direction_accuracy,
                                                            t2v_accuracy, t2v_consistency
  video_joint_consistency  joint trained                    video_joint_consistency,
                                                            video_joint_digit_consistency,
                                                            video_joint_direction_consistency
  captions                 as above                         bleu4, cider_d, caption_accuracy
                                                            (digit and direction),
                                                            caption_digit_accuracy,
                                                            caption_direction_accuracy
  vqa                      as above                         vqa_accuracy(_by_question)
  frame_prediction         class2img trained, --tasks       predict_mse, predict_psnr,
                           predict / interpolate (default)  predict_direction_accuracy,
                                                            interpolate_... likewise

Captions and VQA answers are decoded greedily (``--caption_temperature=0``,
``--vqa_temperature=0``), as captioning and VQA benchmarks decode; ``caption_accuracy_sampled``
and ``vqa_accuracy_sampled`` score captions and answers sampled at the config's
``sample.text_temperature`` (the temperature of the joint and text tasks).

Any dataset, against an ADM reference batch (ADM's protocol: ``experiments.sample
--format=adm`` writes the samples)::

  python -m experiments.evaluate --workdir=DIR --ref_batch=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=pt_inception.npz --samples=fid50k.npz

gives ``fid``, ``inception_score``, ``precision_inception`` and ``recall_inception`` (k = 3)
from InceptionV3 pool_3 features; without ``--samples`` the class2img samples generated here are
scored. ``--ref_split=validation`` (with ``--ref_num=N`` for its first N images) takes the
reference from a split of the run's own dataset instead, at the model's resolution. Either
way the reference's features and statistics are computed once and cached in
``reference_stats/`` of ``--out_dir`` (default: the workdir); ``--tasks=`` (empty) skips sampling to score only a ``--samples`` file.

Every option, input file (weights, reference,
samples) and the output folder is checked before the first sample is drawn; the table is
printed before anything is written; ``eval.json`` is replaced atomically, and one that cannot be
read is set aside as ``eval.json.unreadable-<time>``. ``--out_dir`` takes ``eval.json`` and the
caches (reference statistics, the digits classifier) elsewhere, so a read-only workdir can be
evaluated.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from etils import epath

from experiments import allocator
from experiments import distributed
from experiments.evaluators import (EVAL_TASKS, EVALUATORS, K, Context,  # noqa: F401
                                    EvaluateUsageError, Options)
from experiments.workdir import open_run, sampler_overrides
from mdm_jax.evaluation import inception, reference_batch
from mdm_jax.generate import JOINT_ORDERS

FLAGS = flags.FLAGS
EVAL_JSON = "eval.json"


def define_flags():
  """The CLI's flags. Defined only when this module is the program, so that `evaluate` can be
  imported by other CLIs (ablation, bench) that define their own `--workdir`, `--steps`, ..."""
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_integer("per_class", 30, "class2img samples per class.")
  flags.DEFINE_integer("num_heldout", None, "Held-out examples for caption/VQA (default: all).")
  flags.DEFINE_integer("batch", 100, "Generation batch size.")
  flags.DEFINE_integer("steps", None, "Override sample.steps.")
  flags.DEFINE_float("cfg", None, "Override sample.guidance (on the class).")
  flags.DEFINE_float("caption_cfg", None, "Override sample.caption_guidance (on the caption).")
  flags.DEFINE_enum("joint_order", None, list(JOINT_ORDERS), "Override sample.joint_order (how "
                    "joint samples are drawn).")
  flags.DEFINE_float("caption_temperature", 0.0,
                     "Text temperature of the captions (0: greedy).")
  flags.DEFINE_float("vqa_temperature", 0.0, "Text temperature of the VQA answers (0: greedy).")
  flags.DEFINE_integer("text_draws", 16, "Monte-Carlo draws per caption of the text bound.")
  flags.DEFINE_string("ref_batch", None, "An ADM reference batch .npz (arr_0 uint8 NHWC, and "
                      "mu/sigma if precomputed): FID / IS / precision / recall against it, with "
                      "--inception_weights.")
  flags.DEFINE_string("ref_split", None, "A split of the run's own dataset (e.g. validation) "
                      "as the reference, at the model's resolution: FID / IS / precision / "
                      "recall against it, with --inception_weights. Its statistics are cached "
                      "in reference_stats/ of --out_dir (default: the workdir).")
  flags.DEFINE_integer("ref_num", None, "With --ref_split: its first N images (default: all).")
  flags.DEFINE_list("tasks", list(EVAL_TASKS), "The tasks to sample and score (comma-separated; "
                    "predict and interpolate: a clip model's inpainting in time; empty: only "
                    "the --samples file against the reference).")
  flags.DEFINE_string("inception_weights", None, "InceptionV3 weights (.npz or .safetensors, "
                      "PyTorch state_dict keys; see mdm_jax.evaluation.inception).")
  flags.DEFINE_string("out_dir", None, "Where eval.json, the reference statistics and the "
                      "digits classifier are cached and written (default: the workdir; pass a "
                      "writable folder to evaluate a read-only workdir).")
  flags.DEFINE_string("samples", None, "With --ref_batch or --ref_split: the samples to score (an .npz of "
                      "experiments.sample, arr_0 or images); default: the class2img samples "
                      "generated here.")


def evaluate(workdir: str, *, per_class=30, num_heldout=None, batch=100, overrides=None,
             tasks=EVAL_TASKS, write=True, caption_temperature=0.0, vqa_temperature=0.0,
             text_draws=16, ref_batch=None, ref_split=None, ref_num=None, inception_weights=None,
             samples=None, out_dir=None, show=None, evaluators=EVALUATORS) -> dict:
  """Samples what ``tasks`` need from ``workdir``'s checkpoint and scores them with every one
  of ``evaluators`` that applies (``experiments.evaluators``; the module docstring lists the
  metrics). Every option, input file and the output folder, then every chosen evaluator's
  inputs, are checked before the first sample (EvaluateUsageError). ``show(results)`` (the
  CLI's table) runs before anything is written; ``write`` merges the results into
  ``out_dir/eval.json`` (default: the workdir's). Returns the results."""
  options = Options(per_class=per_class, num_heldout=num_heldout, batch=batch,
                    tasks=tuple(tasks), caption_temperature=caption_temperature,
                    vqa_temperature=vqa_temperature, text_draws=text_draws,
                    ref_batch=ref_batch, ref_split=ref_split, ref_num=ref_num,
                    inception_weights=inception_weights, samples=samples)
  check_options(options)
  extractor = check_files(inception_weights=inception_weights, ref_batch=ref_batch,
                          samples=samples)
  out_dir = workdir if out_dir is None else out_dir
  if write or options.has_ref:
    check_writable(out_dir)
  if write:
    read_eval_json(out_dir)   # an unreadable one is set aside now, with its warning
  run = open_run(workdir, overrides)
  ctx = Context(run, options, workdir=workdir, out_dir=out_dir, inception=extractor)
  chosen = [e for e in evaluators if e.applies(ctx)]
  for e in chosen:
    e.check(ctx)
  logging.info("evaluators: %s", ", ".join(e.name for e in chosen) or "none")
  results = {"step": run.step, "config": run.config.data.name, "per_class": per_class}
  for i, e in enumerate(chosen):
    t0 = time.time()
    results.update(e(ctx))
    logging.info("evaluator %d/%d %s: done in %.0f s", i + 1, len(chosen), e.name,
                 time.time() - t0)
  if show is not None:
    show(results)
  if write:
    write_eval_json(out_dir, results)
  return results


def check_options(o: Options) -> None:
  """The option combinations that cannot work, refused before anything is loaded."""
  def bad(message):
    raise EvaluateUsageError(message)
  unknown = [t for t in o.tasks if t not in EVAL_TASKS]
  if unknown:
    bad(f"unknown --tasks {unknown}; choose from {','.join(EVAL_TASKS)}")
  for name in ("per_class", "batch", "text_draws", "num_heldout"):
    if getattr(o, name) is not None and getattr(o, name) < 1:
      bad(f"--{name}={getattr(o, name)} must be >= 1")
  for name in ("caption_temperature", "vqa_temperature"):
    if getattr(o, name) < 0:
      bad(f"--{name}={getattr(o, name)} must be >= 0 (0: greedy)")
  if o.ref_batch is not None and o.ref_split is not None:
    bad("pass one reference: --ref_batch (an ADM .npz) or --ref_split (a split of the run's "
        "dataset), not both")
  if o.has_ref != (o.inception_weights is not None):
    bad("--inception_weights goes with --ref_batch or --ref_split: FID against a reference "
        "needs both the reference and the InceptionV3 weights file")
  if o.samples is not None and not o.has_ref:
    bad("--samples is scored against --ref_batch or --ref_split: pass one (and "
        "--inception_weights)")
  if o.ref_num is not None and o.ref_split is None:
    bad(f"--ref_num={o.ref_num} counts the images of --ref_split; pass --ref_split too, or "
        "leave --ref_num out")
  if o.ref_num is not None and o.ref_num <= K:
    bad(f"--ref_num={o.ref_num}: precision / recall (k={K}) need more than {K} reference "
        "images")
  if o.has_ref and o.samples is None and "class2img" not in o.tasks:
    bad("nothing to score against the reference: pass --samples, or keep class2img in --tasks")


def check_files(*, inception_weights, ref_batch, samples):
  """The input files, read (the reference batch and samples: their headers only). Returns the
  InceptionV3 feature extractor (None without --inception_weights)."""
  extractor = None
  if inception_weights is not None:
    try:
      extractor = inception.InceptionFeatureExtractor(inception_weights)
    except (OSError, ValueError, ImportError) as e:
      raise EvaluateUsageError(f"--inception_weights={inception_weights}: {e}") from None
  for flag, path in (("ref_batch", ref_batch), ("samples", samples)):
    if path is None:
      continue
    try:
      n = reference_batch.check_reference_batch(path)[0]
    except (OSError, ValueError) as e:
      raise EvaluateUsageError(f"--{flag}={path}: {e}") from None
    if n <= K:
      raise EvaluateUsageError(f"--{flag}={path} holds {n} images: precision / recall "
                               f"(k={K}) need more than {K}")
  return extractor


def check_writable(out_dir) -> None:
  """Writes and removes a probe file in ``out_dir``: the only test that holds for root, for
  read-only mounts and for object stores alike (permission bits and os.access say neither)."""
  folder = epath.Path(out_dir)
  probe = folder / f".eval-write-probe-{os.getpid()}"
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except Exception as e:  # noqa: BLE001  (object stores raise their own error types)
    raise EvaluateUsageError(
        f"cannot write to {os.fspath(folder)} ({type(e).__name__}: {e}): eval.json and the "
        "cached reference statistics / classifier go there. Pass --out_dir=A_WRITABLE_FOLDER "
        "(the workdir is then only read), or make the folder writable") from None


def read_eval_json(out_dir) -> dict | None:
  """``out_dir/eval.json``, or None when there is none. One that cannot be read (a truncated
  write, hand edits) is set aside as ``eval.json.unreadable-<time>`` with a warning, so that it
  never breaks an evaluation."""
  path = epath.Path(out_dir) / EVAL_JSON
  if not path.exists():
    return None
  try:
    previous = json.loads(path.read_text())
    if isinstance(previous, dict):
      return previous
    problem = f"holds a JSON {type(previous).__name__}, not an object"
  except (ValueError, UnicodeDecodeError) as e:
    problem = f"is not valid JSON ({e})"
  aside = path.parent / f"{EVAL_JSON}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
  path.replace(aside)
  logging.warning("%s %s: set aside as %s; this evaluation writes a new %s", os.fspath(path),
                  problem, os.fspath(aside), EVAL_JSON)
  return None


def write_eval_json(out_dir, results: dict) -> epath.Path:
  """Merges ``results`` into ``out_dir/eval.json`` (``merged_results``), atomically: written to
  a temporary file, then renamed over it, so a killed write leaves the old file whole. On an
  object store (gs://) the rename is a copy + delete, still never a half-written eval.json (an
  object appears only when its upload completes)."""
  path = epath.Path(out_dir) / EVAL_JSON
  merged = merged_results(read_eval_json(out_dir), results)
  tmp = path.parent / f".{EVAL_JSON}.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(merged, indent=1))
  tmp.replace(path)
  return path


def merged_results(previous: dict | None, results: dict) -> dict:
  """What ``eval.json`` holds after an evaluation: ``results`` over ``previous`` when both are of
  the same checkpoint (step and data) and sample size (``per_class``), so that ``--tasks=vqa``
  updates the VQA scores and keeps the others; ``results`` alone otherwise (scores of another
  checkpoint or sample size are dropped)."""
  if previous is None or any(previous.get(k) != results.get(k)
                             for k in ("step", "config", "per_class")):
    return dict(results)
  return {**previous, **results}


def main(argv):
  del argv
  # One process: the metrics, the cached classifier and eval.json are host-side work.
  distributed.maybe_initialize("auto")
  distributed.refuse_multiple_processes("experiments.evaluate")
  overrides = sampler_overrides(FLAGS.steps, FLAGS.cfg, caption_guidance=FLAGS.caption_cfg,
                                joint_order=FLAGS.joint_order)
  try:
    evaluate(FLAGS.workdir, per_class=FLAGS.per_class, num_heldout=FLAGS.num_heldout,
             batch=FLAGS.batch, overrides=overrides,
             caption_temperature=FLAGS.caption_temperature, vqa_temperature=FLAGS.vqa_temperature,
             ref_batch=FLAGS.ref_batch, ref_split=FLAGS.ref_split, ref_num=FLAGS.ref_num,
             tasks=tuple(FLAGS.tasks), inception_weights=FLAGS.inception_weights,
             samples=FLAGS.samples, text_draws=FLAGS.text_draws, out_dir=FLAGS.out_dir,
             show=print_table)
  except EvaluateUsageError as e:
    raise app.UsageError(str(e)) from None


def print_table(results: dict) -> None:
  """The results as a markdown table, then a few examples of each generated text."""
  print(f"\n| metric | value |\n|---|---|")
  for k, v in results.items():
    if isinstance(v, float):
      print(f"| {k} | {v:.4f} |")
    elif isinstance(v, (int, str)):
      print(f"| {k} | {v} |")
  for template, acc in results.get("t2i_accuracy_by_template", {}).items():
    print(f"| t2i_accuracy: {template} | {acc:.4f} |")
  for question, acc in results.get("vqa_accuracy_by_question", {}).items():
    print(f"| vqa_accuracy: {question} | {acc:.4f} |")
  for k in ("caption_examples", "vqa_examples", "joint_examples", "video_joint_examples"):
    for row in results.get(k, [])[:5]:
      print(f"  {k[:-9]}: {row}", flush=True)


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()  # XLA:CPU's steps, up to a third faster
  define_flags()
  app.run(main)
