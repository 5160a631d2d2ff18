r"""Evaluate a trained workdir: sample what the config's tasks need, run every metric, write
``eval.json`` and print a table.

  python -m experiments.evaluate --workdir=/tmp/mdm_digits

Digits (the default run):
  * class2img: ``--per_class`` samples per digit; an independent MLP classifier trained on the
    real digits' training split (97-98% on held-out real digits; cached in the workdir) reads
    them; ``class_accuracy`` is the fraction read as the requested digit. FID / IS /
    precision / recall use that classifier's features against the held-out real digits.
    ``diversity``: per digit, the samples' mean per-pixel std over that of the held-out real
    digits of that class, averaged over the digits (1: as varied as real digits, 0: one image).
  * t2i: ``t2i_accuracy``, the fraction of images generated from the held-out captions that
    the classifier reads as the digit the prompt names; ``t2i_accuracy_templates`` the same
    with every caption template of every digit as prompts (``per_class // 10`` each, >= 1).
  * joint: ``joint_consistency``, over ``per_class * 10`` image+caption pairs generated
    together, the fraction whose image the classifier reads as the one digit its caption
    names (a caption naming no digit or several counts as inconsistent).
  * caption: one caption per held-out image; ``caption_accuracy`` is the fraction that name
    the image's digit (as a word or numeral) and no other digit (``multimodal.digit_named``,
    the reading the t2i and joint metrics share). BLEU-4 and CIDEr-D against
    the image's reference captions (every template of its label).
  * vqa: one question per held-out image (cycling through the question types); ``vqa_accuracy``
    is the VQA score against the dataset's own answer (exact match after VQA normalisation).
    Answers are decoded greedily (``--vqa_temperature=0``: each [MASK] becomes the model's most
    likely token), as VQA benchmarks decode; ``vqa_accuracy_sampled`` is the same score for
    answers sampled at the config's ``sample.text_temperature``; ``vqa_accuracy_by_question``
    breaks the greedy score down by question.
  * text: ``text_bits_per_token`` and ``text_perplexity`` of the held-out captions (the first
    reference of each), from SEDD's bound (the Markov ablation's: the absorbing-chain ELBO;
    ``--text_draws`` Monte-Carlo draws of the noise level per caption; its tokens and eos
    count, not the padding).

Any dataset, against an ADM reference batch (ADM's protocol: ``experiments.sample
--format=adm`` writes the samples)::

  python -m experiments.evaluate --workdir=DIR --ref_batch=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=pt_inception.npz --samples=fid50k.npz

gives ``fid``, ``inception_score``, ``precision_inception`` and ``recall_inception`` (k = 3)
from InceptionV3 pool_3 features; without ``--samples`` the class2img samples generated here are
scored. ``--ref_split=validation`` (with ``--ref_num=N`` for its first N images) takes the
reference from a split of the run's own dataset instead, at the model's resolution. Either
way the reference's features and statistics are computed once and cached in the workdir's
``reference_stats/``; ``--tasks=`` (empty) skips sampling to score only a ``--samples`` file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import zipfile

from absl import app, flags, logging
from etils import epath
import jax
import numpy as np

from experiments import allocator
from experiments import distributed
from experiments.workdir import open_run, sampler_overrides, vqa_prompts
from mdm_jax import api
from mdm_jax import tasks as tasks_lib
from mdm_jax.evaluation import (digits_classifier, feature_extractor, image_metrics, inception,
                                 multimodal, perplexity, reference_batch, reference_stats,
                                 text_metrics, vqa)
from mdm_jax.generate import JOINT_ORDERS

FLAGS = flags.FLAGS


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
  flags.DEFINE_float("vqa_temperature", 0.0, "Text temperature of the VQA answers (0: greedy).")
  flags.DEFINE_integer("text_draws", 16, "Monte-Carlo draws per caption of the text bound.")
  flags.DEFINE_string("ref_batch", None, "An ADM reference batch .npz (arr_0 uint8 NHWC, and "
                      "mu/sigma if precomputed): FID / IS / precision / recall against it, with "
                      "--inception_weights.")
  flags.DEFINE_string("ref_split", None, "A split of the run's own dataset (e.g. validation) "
                      "as the reference, at the model's resolution: FID / IS / precision / "
                      "recall against it, with --inception_weights. Its statistics are cached "
                      "in the workdir's reference_stats/.")
  flags.DEFINE_integer("ref_num", None, "With --ref_split: its first N images (default: all).")
  flags.DEFINE_list("tasks", list(EVAL_TASKS), "The tasks to sample and score (comma-separated; "
                    "empty: only the --samples file against the reference).")
  flags.DEFINE_string("inception_weights", None, "InceptionV3 weights (.npz or .safetensors, "
                      "PyTorch state_dict keys; see mdm_jax.evaluation.inception).")
  flags.DEFINE_string("out_dir", None, "Where eval.json, the reference statistics and the "
                      "digits classifier are cached and written (default: the workdir; pass a "
                      "writable folder to evaluate a read-only workdir).")
  flags.DEFINE_string("samples", None, "With --ref_batch or --ref_split: the samples to score (an .npz of "
                      "experiments.sample, arr_0 or images); default: the class2img samples "
                      "generated here.")

REFERENCE_CACHE = "reference_stats"   # under the output folder
EVAL_JSON = "eval.json"
K = 3   # precision / recall's k-NN: each set needs more than K images


class EvaluateUsageError(ValueError):
  """A bad input, option or output folder, found before any sample is drawn."""


def reference_statistics(out_dir, extractor, inception_weights: str, *, config,
                         ref_batch: str | None = None, ref_split: str | None = None,
                         ref_num: int | None = None, batch: int = 100, workdir=None):
  """InceptionV3 statistics of the reference set: an ADM reference batch (its own mu/sigma
  when it has them, as ADM's evaluator) or the first ``ref_num`` images of a split of the
  run's dataset at the model's resolution. Computed once and cached in
  ``out_dir/reference_stats/`` (keyed by the reference and the weights file's digest); a cache
  in ``workdir/reference_stats/`` is read too (a read-only workdir evaluated with --out_dir).

  Returns (ReferenceStats, a dict of what was used, for eval.json)."""
  from data import pipeline
  weights = reference_stats.file_digest(inception_weights)
  extract = lambda images: extractor.features(images)[0]
  if ref_batch is not None:
    digest = reference_stats.file_digest(ref_batch)
    key = f"batch {digest} inception {weights}"
    name = f"batch-{digest}-inception-{weights}.npz"

    def compute():
      ref = reference_batch.load_reference_batch(ref_batch)
      batches = (ref.images[i:i + batch] for i in range(0, len(ref.images), batch))
      return reference_stats.stats_from_batches(extract, batches, mu=ref.mu, sigma=ref.sigma)
    info = {"reference": f"batch {ref_batch}"}
  else:
    d = config.data
    n = pipeline.split_size(d.name, split=ref_split, data_dir=d.data_dir)
    n = n if ref_num is None else min(ref_num, n)
    shape = f"{d.image_size}x{d.image_size}x{d.channels}"
    key = f"{d.name} {ref_split} {n} {shape} inception {weights}"
    name = f"{d.name}-{ref_split}-{n}-{shape}-inception-{weights}.npz"
    batches = (api.to_uint8(x) for x in pipeline.iter_images(
        d.name, split=ref_split, num=n, image_size=d.image_size, channels=d.channels,
        data_dir=d.data_dir, batch_size=batch))
    compute = lambda: reference_stats.stats_from_batches(extract, batches)
    info = {"reference": f"{d.name}/{ref_split}"}
  t0 = time.time()
  path = epath.Path(out_dir) / REFERENCE_CACHE / name
  stats = None
  for folder in dict.fromkeys(f for f in (out_dir, workdir) if f is not None):
    stats = reference_stats.load(epath.Path(folder) / REFERENCE_CACHE / name, key)
    if stats is not None:
      path = epath.Path(folder) / REFERENCE_CACHE / name
      break
  was_cached = stats is not None
  if not was_cached:
    stats = compute()
    _try_to_cache(lambda: reference_stats.save(path, key, stats), path)
  logging.info("reference statistics of %s (%d images): %s in %.1fs", info["reference"],
               stats.count, "read from " + os.fspath(path) if was_cached else "computed",
               time.time() - t0)
  return stats, dict(info, reference_cache=os.fspath(path), reference_cached=was_cached)


def _try_to_cache(save, path) -> None:
  """A cache that cannot be written (disk full, ...) costs the next run time, not this one's
  results: a warning, not an error."""
  try:
    save()
  except OSError as e:
    logging.warning("could not cache %s (%s: %s); it is computed again next time", path,
                    type(e).__name__, e)


def reference_metrics(samples: np.ndarray, ref: reference_stats.ReferenceStats, extractor, *,
                      batch: int = 100, k: int = 3) -> dict:
  """FID / IS / precision / recall of uint8 (n, h, w, c) ``samples`` against the reference
  statistics, with InceptionV3 pool_3 features."""
  f_fake, logits = feature_extractor.extract_features(extractor, samples, batch)
  p, r = image_metrics.precision_recall(ref.features, f_fake, k=k)
  return {"fid": image_metrics.frechet_distance(ref.mu, ref.sigma,
                                                *image_metrics.gaussian_statistics(f_fake)),
          "inception_score": image_metrics.inception_score(np.asarray(jax.nn.softmax(logits))),
          "precision_inception": p, "recall_inception": r, "num_samples": int(len(samples)),
          "num_reference": ref.count}


DIGITS_CLASSIFIER = "digits_classifier.npz"


def classifier(out_dir, workdir=None):
  """The digits classifier cached in ``out_dir`` (or ``workdir``), else trained (seed 0) and
  cached in ``out_dir``; an unreadable cache is trained again."""
  for folder in dict.fromkeys(f for f in (out_dir, workdir) if f is not None):
    path = epath.Path(folder) / DIGITS_CLASSIFIER
    if path.exists():
      try:
        return digits_classifier.load_digits_classifier(os.fspath(path))
      except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        logging.warning("%s is unreadable (%s: %s): training the classifier again", path,
                        type(e).__name__, e)
  params = digits_classifier.train_digits_classifier(seed=0)
  path = epath.Path(out_dir) / DIGITS_CLASSIFIER
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  _try_to_cache(lambda: (digits_classifier.save_digits_classifier(params, os.fspath(tmp)),
                         tmp.replace(path)), path)
  return params


EVAL_TASKS = tasks_lib.TASKS   # every trained task has its metrics


def check_options(*, per_class, num_heldout, batch, tasks, text_draws, vqa_temperature,
                  ref_batch, ref_split, ref_num, inception_weights, samples) -> None:
  """The option combinations that cannot work, refused before anything is loaded."""
  def bad(message):
    raise EvaluateUsageError(message)
  unknown = [t for t in tasks if t not in EVAL_TASKS]
  if unknown:
    bad(f"unknown --tasks {unknown}; choose from {','.join(EVAL_TASKS)}")
  for name, value in (("per_class", per_class), ("batch", batch), ("text_draws", text_draws),
                      ("num_heldout", num_heldout)):
    if value is not None and value < 1:
      bad(f"--{name}={value} must be >= 1")
  if vqa_temperature < 0:
    bad(f"--vqa_temperature={vqa_temperature} must be >= 0 (0: greedy)")
  if ref_batch is not None and ref_split is not None:
    bad("pass one reference: --ref_batch (an ADM .npz) or --ref_split (a split of the run's "
        "dataset), not both")
  has_ref = ref_batch is not None or ref_split is not None
  if has_ref != (inception_weights is not None):
    bad("--inception_weights goes with --ref_batch or --ref_split: FID against a reference "
        "needs both the reference and the InceptionV3 weights file")
  if samples is not None and not has_ref:
    bad("--samples is scored against --ref_batch or --ref_split: pass one (and "
        "--inception_weights)")
  if ref_num is not None and ref_split is None:
    bad(f"--ref_num={ref_num} counts the images of --ref_split; pass --ref_split too, or leave "
        "--ref_num out")
  if ref_num is not None and ref_num <= K:
    bad(f"--ref_num={ref_num}: precision / recall (k={K}) need more than {K} reference images")
  if has_ref and samples is None and "class2img" not in tasks:
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


def check_run(run, *, tasks, per_class, num_heldout, samples, ref_split, ref_num,
              has_ref) -> None:
  """What depends on the reopened run: the reference split and the sample counts the metrics
  need."""
  from data import pipeline
  config = run.config
  weights = dict(zip(tasks_lib.TASKS, config.loss.task_weights))
  num_classes = run.trainer.model_cfg.num_classes
  if ref_split is not None:
    try:
      n = pipeline.split_size(config.data.name, split=ref_split, data_dir=config.data.data_dir)
    except Exception as e:  # noqa: BLE001  (tfds, folder and digits each raise their own)
      raise EvaluateUsageError(f"--ref_split={ref_split}: the run's dataset "
                               f"{config.data.name} cannot open it ({type(e).__name__}: {e}); "
                               "pass one of its splits (e.g. test, validation)") from None
    n = n if ref_num is None else min(ref_num, n)
    if n <= K:
      raise EvaluateUsageError(f"--ref_split={ref_split} has {n} images: precision / recall "
                               f"(k={K}) need more than {K}")
  sampled = "class2img" in tasks and weights["class2img"] > 0 and samples is None
  if has_ref and samples is None and not sampled:
    raise EvaluateUsageError("nothing to score against the reference: this run did not train "
                             "class2img (its task weight is 0); pass --samples")
  if sampled and (has_ref or config.data.name == "digits") and per_class * num_classes <= K:
    raise EvaluateUsageError(f"--per_class={per_class} x {num_classes} classes: precision / "
                             f"recall (k={K}) need more than {K} samples")
  if sampled and config.data.name == "digits":
    if per_class < 2:
      raise EvaluateUsageError(f"--per_class={per_class}: the digits' within-class diversity "
                               "is a spread over each digit's samples and needs >= 2; pass "
                               "--per_class=2 or more")
    if num_heldout is not None and num_heldout <= K:
      raise EvaluateUsageError(f"--num_heldout={num_heldout}: the digits' FID / precision / "
                               f"recall compare the samples with the held-out images and need "
                               f"more than {K}")


def evaluate(workdir: str, *, per_class=30, num_heldout=None, batch=100, overrides=None,
             tasks=EVAL_TASKS, write=True, vqa_temperature=0.0,
             text_draws=16,
             ref_batch=None, ref_split=None, ref_num=None, inception_weights=None,
             samples=None, out_dir=None, show=None):
  """Samples what ``tasks`` need from ``workdir``'s checkpoint and scores them (module
  docstring). Every input, option and the output folder is checked before the first sample
  (EvaluateUsageError). ``show(results)`` (the CLI's table) runs before anything is written;
  ``write`` merges the results into ``out_dir/eval.json`` (default: the workdir's)."""
  from data import pipeline
  tasks = tuple(tasks)
  check_options(per_class=per_class, num_heldout=num_heldout, batch=batch, tasks=tasks,
                text_draws=text_draws, vqa_temperature=vqa_temperature, ref_batch=ref_batch,
                ref_split=ref_split, ref_num=ref_num, inception_weights=inception_weights,
                samples=samples)
  has_ref = ref_batch is not None or ref_split is not None
  extractor = check_files(inception_weights=inception_weights, ref_batch=ref_batch,
                          samples=samples)
  out_dir = workdir if out_dir is None else out_dir
  if write or has_ref:
    check_writable(out_dir)
  if write:
    read_eval_json(out_dir)   # an unreadable one is set aside now, with its warning
  run = open_run(workdir, overrides)
  check_run(run, tasks=tasks, per_class=per_class, num_heldout=num_heldout, samples=samples,
            ref_split=ref_split, ref_num=ref_num, has_ref=has_ref)
  pipe = api.Pipeline(run, batch_size=batch)
  config, tok, mc = run.config, run.tokenizer, run.trainer.model_cfg
  weights = dict(zip(tasks_lib.TASKS, config.loss.task_weights))
  seed = 1234
  results = {"step": run.step, "config": config.data.name, "per_class": per_class}
  heldout = pipeline.eval_examples(config.data.name,
                                   split=pipeline.heldout_split(config.data.name), num=num_heldout,
                                   image_size=config.data.image_size,
                                   channels=config.data.channels, data_dir=config.data.data_dir)
  is_digits = config.data.name == "digits"
  heldout_images = np.stack([e["image"] for e in heldout]) if heldout else None

  images = None
  if samples is not None:   # scored from the file: nothing to generate for class2img
    tasks = tuple(t for t in tasks if t != "class2img")
  if weights["class2img"] > 0 and "class2img" in tasks:
    t0 = time.time()
    labels = np.repeat(np.arange(mc.num_classes), per_class)
    images, _ = pipe.generate("class2img", len(labels), seed=seed, labels=labels)
    results["class2img_seconds"] = time.time() - t0
    if is_digits:
      params = classifier(out_dir, workdir)
      digits_features = digits_classifier.DigitsFeatureExtractor(params)
      results["class_accuracy"] = float(digits_classifier.digits_accuracy(params, images, labels))
      f_fake, logits = digits_features.features(images)
      f_real, _ = digits_features.features(heldout_images)
      results["fid_digits"] = image_metrics.frechet_distance_from_features(f_real, f_fake)
      results["is_digits"] = image_metrics.inception_score(np.asarray(jax.nn.softmax(logits)))
      p, r = image_metrics.precision_recall(f_real, f_fake, k=3)
      results["precision"], results["recall"] = p, r
      # Against every held-out digit of each class (--num_heldout may leave too few).
      real = heldout if num_heldout is None else pipeline.eval_examples(
          config.data.name, split=pipeline.heldout_split(config.data.name), num=None,
          image_size=config.data.image_size, channels=config.data.channels,
          data_dir=config.data.data_dir)
      results["diversity"] = multimodal.within_class_diversity(
          images, labels, np.stack([e["image"] for e in real]),
          np.asarray([e["label"] for e in real]))

  if is_digits and tok is not None and weights["t2i"] > 0 and heldout and "t2i" in tasks:
    # Prompts: the held-out captions, and separately every caption template of every digit
    # (repeated to about per_class samples per digit).
    from data import text_templates
    params = classifier(out_dir, workdir)
    t0 = time.time()
    templates = text_templates.DIGIT_CAPTION_TEMPLATES
    repeats = max(1, per_class // len(templates))
    prompt_sets = {
        "t2i_accuracy": [e["captions"][0] for e in heldout],
        "t2i_accuracy_templates": [
            t.format(word=text_templates.DIGIT_WORDS[d], num=d)
            for d in range(10) for t in templates for _ in range(repeats)]}
    for name, prompts in prompt_sets.items():
      images_t2i = pipe.text_to_image(prompts, seed=seed)
      results[name] = multimodal.text_to_image_accuracy(
          digits_classifier.digits_predict(params, images_t2i), prompts)
    results["t2i_seconds"] = time.time() - t0

  if is_digits and tok is not None and weights["joint"] > 0 and "joint" in tasks:
    params = classifier(out_dir, workdir)
    t0 = time.time()
    images_joint, captions_joint = pipe.joint(per_class * mc.num_classes, seed=seed)
    predicted = digits_classifier.digits_predict(params, images_joint)
    results["joint_consistency"] = multimodal.joint_consistency(predicted, captions_joint)
    results["joint_seconds"] = time.time() - t0
    results["joint_examples"] = [{"read_as": int(p), "text": c}
                                 for p, c in list(zip(predicted, captions_joint))[:10]]

  if has_ref:
    if samples is not None:
      scored = reference_batch.load_reference_batch(samples).images
    elif images is not None:
      scored = api.to_uint8(images)
    ref, info = reference_statistics(out_dir, extractor, inception_weights, config=config,
                                     ref_batch=ref_batch, ref_split=ref_split, ref_num=ref_num,
                                     batch=batch, workdir=workdir)
    results.update(info)
    results.update(reference_metrics(scored, ref, extractor, batch=batch))

  if tok is None:  # data without text: class-to-image only (its text tasks never trained)
    tasks = tuple(t for t in tasks if t in tasks_lib.servable(()))
  if weights["caption"] > 0 and heldout and "caption" in tasks:
    _, tokens = pipe.generate("caption", len(heldout), seed=seed, images=heldout_images)
    captions = [tok.decode(t) for t in tokens]
    refs = [e["captions"] for e in heldout]
    results["bleu4"] = text_metrics.corpus_bleu(captions, refs)
    results["cider_d"] = text_metrics.cider_d(captions, refs)[0]
    if is_digits:
      results["caption_accuracy"] = float(np.mean(
          [multimodal.digit_named(c) == e["label"] for c, e in zip(captions, heldout)]))
    results["caption_examples"] = [{"label": e["label"], "text": c}
                                   for e, c in list(zip(heldout, captions))[:10]]

  if (weights["vqa"] > 0 and heldout and heldout[0]["question"] is not None
      and "vqa" in tasks):
    seqs, plens = vqa_prompts(tok, heldout, mc.max_text_len)
    references = [[e["answer"]] for e in heldout]
    sampled_t = run.trainer.sample_cfg.text_temperature
    decodings = {"vqa_accuracy": vqa_temperature}
    if sampled_t != vqa_temperature:
      decodings["vqa_accuracy_sampled"] = sampled_t
    for name, temperature in decodings.items():
      _, tokens = pipe.generate(
          "vqa", len(heldout), seed=seed,
          sample_cfg=dataclasses.replace(run.trainer.sample_cfg, text_temperature=temperature),
          images=heldout_images, text=seqs, prompt_len=plens)
      answers = [tok.decode(t[p:]) for t, p in zip(tokens, plens)]
      results[name] = float(vqa.mean_vqa_accuracy(answers, references))
      if name == "vqa_accuracy":
        results["vqa_temperature"] = float(temperature)
        results["vqa_accuracy_by_question"] = vqa.accuracy_by_question(
            answers, references, [e["question"] for e in heldout])
        results["vqa_examples"] = [
            {"question": e["question"], "reference": e["answer"], "text": a}
            for e, a in list(zip(heldout, answers))[:10]]

  if weights["text"] > 0 and heldout and "text" in tasks:
    # Text likelihood of held-out captions: SEDD's bound, bits per token and perplexity.
    nll, counts = pipe.text_nll([e["captions"][0] for e in heldout], num_draws=text_draws,
                                seed=seed)
    results["text_bits_per_token"] = float(nll.sum() / counts.sum() / np.log(2.0))
    results["text_perplexity"] = perplexity.perplexity_from_elbo(nll, counts)
    results["text_perplexity_draws"] = text_draws

  if show is not None:
    show(results)
  if write:
    write_eval_json(out_dir, results)
  return results


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
             batch=FLAGS.batch, overrides=overrides, vqa_temperature=FLAGS.vqa_temperature,
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
  for question, acc in results.get("vqa_accuracy_by_question", {}).items():
    print(f"| vqa_accuracy: {question} | {acc:.4f} |")
  for k in ("caption_examples", "vqa_examples", "joint_examples"):
    for row in results.get(k, [])[:5]:
      print(f"  {k[:-9]}: {row}", flush=True)


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()  # XLA:CPU's steps, up to a third faster
  define_flags()
  app.run(main)
