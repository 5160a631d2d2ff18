"""Image quality against a reference set, ADM's protocol: FID, Inception Score and precision /
recall (k = 3) from InceptionV3 pool_3 features. The reference is an ADM reference batch
(--ref_batch) or a split of the run's own dataset (--ref_split); the samples are a --samples
file or the class2img samples made here."""
from __future__ import annotations

import os
import time

from absl import logging
from etils import epath
import jax
import numpy as np

from experiments.evaluators.base import (K, Context, EvaluateUsageError, Evaluator,
                                         try_to_cache)
from mdm_jax import api
from mdm_jax.evaluation import (feature_extractor, image_metrics, reference_batch,
                                reference_stats)

REFERENCE_CACHE = "reference_stats"   # under the output folder (and read from the workdir's)


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
    try_to_cache(lambda: reference_stats.save(path, key, stats), path)
  logging.info("reference statistics of %s (%d images): %s in %.1fs", info["reference"],
               stats.count, "read from " + os.fspath(path) if was_cached else "computed",
               time.time() - t0)
  return stats, dict(info, reference_cache=os.fspath(path), reference_cached=was_cached)


def reference_metrics(samples: np.ndarray, ref: reference_stats.ReferenceStats, extractor, *,
                      batch: int = 100, k: int = K) -> dict:
  """FID / IS / precision / recall of uint8 (n, h, w, c) ``samples`` against the reference
  statistics, with InceptionV3 pool_3 features."""
  f_fake, logits = feature_extractor.extract_features(extractor, samples, batch)
  p, r = image_metrics.precision_recall(ref.features, f_fake, k=k)
  return {"fid": image_metrics.frechet_distance_to_features(ref.mu, ref.sigma, f_fake),
          "inception_score": image_metrics.inception_score(np.asarray(jax.nn.softmax(logits))),
          "precision_inception": p, "recall_inception": r, "num_samples": int(len(samples)),
          "num_reference": ref.count}


class ImageQuality(Evaluator):
  """``fid``, ``inception_score``, ``precision_inception``, ``recall_inception`` against the
  reference, with where its statistics came from (``reference``, ``reference_cache``,
  ``reference_cached``) and the counts (``num_samples``, ``num_reference``)."""
  name = "image_quality"

  def applies(self, ctx):
    return ctx.options.has_ref

  def check(self, ctx):
    from data import pipeline
    o, d = ctx.options, ctx.config.data
    if ctx.frames > 1:
      raise EvaluateUsageError(f"--ref_batch / --ref_split score images with InceptionV3, but "
                               f"this is a clip model's run (model.frames={ctx.frames}); drop "
                               "them: its video metrics need no reference")
    if o.ref_split is not None:
      try:
        n = pipeline.split_size(d.name, split=o.ref_split, data_dir=d.data_dir)
      except Exception as e:  # noqa: BLE001  (tfds, folder and digits each raise their own)
        raise EvaluateUsageError(f"--ref_split={o.ref_split}: the run's dataset {d.name} "
                                 f"cannot open it ({type(e).__name__}: {e}); pass one of its "
                                 "splits (e.g. test, validation)") from None
      n = n if o.ref_num is None else min(o.ref_num, n)
      if n <= K:
        raise EvaluateUsageError(f"--ref_split={o.ref_split} has {n} images: precision / "
                                 f"recall (k={K}) need more than {K}")
    if o.samples is None and not ctx.trained("class2img"):
      raise EvaluateUsageError("nothing to score against the reference: this run did not "
                               "train class2img (its task weight is 0); pass --samples")
    if o.samples is None and o.per_class * ctx.num_classes <= K:
      raise EvaluateUsageError(f"--per_class={o.per_class} x {ctx.num_classes} classes: "
                               f"precision / recall (k={K}) need more than {K} samples")

  def __call__(self, ctx):
    o = ctx.options
    if o.samples is not None:
      scored = reference_batch.load_reference_batch(o.samples).images
    else:
      scored = api.to_uint8(ctx.products["class2img"][0])
    ref, info = reference_statistics(ctx.out_dir, ctx.inception, o.inception_weights,
                                     config=ctx.config, ref_batch=o.ref_batch,
                                     ref_split=o.ref_split, ref_num=o.ref_num, batch=o.batch,
                                     workdir=ctx.workdir)
    return {**info, **reference_metrics(scored, ref, ctx.inception, batch=o.batch)}
