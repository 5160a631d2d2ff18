"""class2img: the class-conditional samples (made once, for every evaluator that scores them)
and their accuracy, FID / IS / precision / recall and diversity as the dataset's own classifier
reads them."""
from __future__ import annotations

import time

import jax
import numpy as np

from experiments.evaluators.base import K, SEED, Context, EvaluateUsageError, Evaluator
from mdm_jax.evaluation import image_metrics, multimodal


class ClassSamples(Evaluator):
  """``--per_class`` samples of each class (``products["class2img"]``: images float
  (n, S, S, C) in [-1, 1] and int labels (n,)), timed: ``class2img_seconds``. Not when
  --samples gives the images to score."""
  name = "class2img_samples"

  def applies(self, ctx):
    return ctx.trained("class2img") and ctx.options.samples is None

  def __call__(self, ctx):
    t0 = time.time()
    labels = np.repeat(np.arange(ctx.num_classes), ctx.options.per_class)
    images, _ = ctx.pipe.generate("class2img", len(labels), seed=SEED, labels=labels)
    ctx.products["class2img"] = images, labels
    return {"class2img_seconds": time.time() - t0}


class ClassAccuracy(Evaluator):
  """The class2img samples read by the dataset's classifier: ``class_accuracy`` (read as the
  class asked for); ``fid_digits``, ``is_digits``, ``precision``, ``recall`` (k = 3) on its
  features against the held-out images; ``diversity``: per class, the samples' mean per-pixel
  std over that of the held-out images of that class, averaged (1: as varied as real images,
  0: one image per class)."""
  name = "class_accuracy"

  def applies(self, ctx):
    return ClassSamples().applies(ctx) and ctx.has_reader

  def check(self, ctx):
    per_class, num_heldout = ctx.options.per_class, ctx.options.num_heldout
    if per_class < 2:
      raise EvaluateUsageError(f"--per_class={per_class}: the within-class diversity is a "
                               "spread over each class's samples and needs >= 2; pass "
                               "--per_class=2 or more")
    if per_class * ctx.num_classes <= K:
      raise EvaluateUsageError(f"--per_class={per_class} x {ctx.num_classes} classes: "
                               f"precision / recall (k={K}) need more than {K} samples")
    if num_heldout is not None and num_heldout <= K:
      raise EvaluateUsageError(f"--num_heldout={num_heldout}: the classifier's FID / precision "
                               "/ recall compare the samples with the held-out images and need "
                               f"more than {K}")

  def __call__(self, ctx):
    images, labels = ctx.products["class2img"]
    reader = ctx.reader
    out = {"class_accuracy": float(np.mean(reader.predict(images) == labels))}
    f_fake, logits = reader.features(images)
    f_real, _ = reader.features(ctx.heldout_images)
    out["fid_digits"] = image_metrics.frechet_distance_from_features(f_real, f_fake)
    out["is_digits"] = image_metrics.inception_score(np.asarray(jax.nn.softmax(logits)))
    out["precision"], out["recall"] = image_metrics.precision_recall(f_real, f_fake, k=K)
    real = ctx.all_heldout
    out["diversity"] = multimodal.within_class_diversity(
        images, labels, np.stack([e["image"] for e in real]),
        np.asarray([e["label"] for e in real]))
    return out
