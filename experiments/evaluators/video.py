"""A clip model's tasks, read by the clip dataset's own reader (``base.CLIP_READERS``: for the
moving digits, the digits classifier on each frame and the ink's centre-of-mass motion): the
clips made from a class show it in every frame, those made from a caption show the digit and the
direction it names, those made with their caption agree with it, and predicted or interpolated
frames are close to the true ones.

Captions and VQA answers of clips are the text evaluators' (``text.Captions``, ``text.VQA``).
"""
from __future__ import annotations

import time

import numpy as np

from experiments.evaluators.base import SEED, Evaluator
from experiments.evaluators.class_conditional import ClassSamples
from mdm_jax import tasks as tasks_lib
from mdm_jax.evaluation import video as video_metrics


def _mean(flags) -> float:
  return float(np.mean(np.asarray(flags, bool)))


def _named(values) -> np.ndarray:
  """int (n,) of what texts name, with -2 for none (matching no reading, not even still)."""
  return np.asarray([-2 if v is None else v for v in values])


class ClassToVideoAccuracy(Evaluator):
  """The class2img clips (``per_class`` of each class), read frame by frame:
  ``class2video_digit_accuracy`` (the clip's majority digit is the class asked for),
  ``class2video_consistency`` (every frame reads the same digit) and ``class2video_moving``
  (the clip moves in one of the directions: the class leaves the direction free, so there is
  no direction to be right about)."""
  name = "class2video_accuracy"

  def applies(self, ctx):
    return ClassSamples().applies(ctx) and ctx.has_clip_reader

  def __call__(self, ctx):
    clips, labels = ctx.products["class2img"]
    read = ctx.clip_reader.read(clips)
    return {"class2video_digit_accuracy": _mean(read.digits == labels),
            "class2video_consistency": _mean(read.consistent),
            "class2video_moving": _mean(read.directions != video_metrics.STILL)}


class TextToVideoAccuracy(Evaluator):
  """One clip per held-out caption (held-out clip ``i``'s caption template ``i`` mod the number
  of templates, so that every template is asked for): ``t2v_digit_accuracy`` (the clip's digit
  is the one the caption names), ``t2v_direction_accuracy`` (it moves the way the caption says),
  ``t2v_accuracy`` (both), ``t2v_consistency`` (every frame reads the same digit)."""
  name = "t2v_accuracy"

  def applies(self, ctx):
    return ctx.trained("t2i") and ctx.has_clip_reader and ctx.has_captions

  def __call__(self, ctx):
    reader = ctx.clip_reader
    t0 = time.time()
    prompts = [e["captions"][i % len(e["captions"])] for i, e in enumerate(ctx.heldout)]
    clips = ctx.pipe.text_to_image(prompts, seed=SEED)
    read = reader.read(clips)
    digit = read.digits == _named(reader.text_class(p) for p in prompts)
    way = read.directions == _named(reader.text_direction(p) for p in prompts)
    return {"t2v_digit_accuracy": _mean(digit), "t2v_direction_accuracy": _mean(way),
            "t2v_accuracy": _mean(digit & way), "t2v_consistency": _mean(read.consistent),
            "t2v_seconds": time.time() - t0}


class VideoJointConsistency(Evaluator):
  """``per_class x classes`` clip + caption pairs generated together, the clip read by the
  reader: ``video_joint_consistency`` (the caption names the clip's digit and its direction,
  and no other), ``video_joint_digit_consistency`` and ``video_joint_direction_consistency``
  (each alone; a still clip agrees with no caption's direction), ``video_joint_examples``: the
  first 10."""
  name = "video_joint_consistency"

  def applies(self, ctx):
    return ctx.trained("joint") and ctx.has_clip_reader

  def __call__(self, ctx):
    reader = ctx.clip_reader
    t0 = time.time()
    clips, captions = ctx.pipe.joint(ctx.options.per_class * ctx.num_classes, seed=SEED)
    read = reader.read(clips)
    agree = reader.text_agreement(captions, read.digits, read.directions)
    return {"video_joint_consistency": agree["both"],
            "video_joint_digit_consistency": agree["digit"],
            "video_joint_direction_consistency": agree["direction"],
            "video_joint_seconds": time.time() - t0,
            "video_joint_examples": [
                {"read_as": int(d), "moving": reader.direction_name(int(m)), "text": c}
                for d, m, c in list(zip(read.digits, read.directions, captions))[:10]]}


class FramePrediction(Evaluator):
  """Inpainting in time on the held-out clips (``experiments.sample``'s frame tasks, each clip
  given with its class): ``predict`` keeps the first half of the frames and generates the rest,
  ``interpolate`` keeps the first and the last. For each, ``<task>_mse`` and ``<task>_psnr``
  (dB) of the generated frames against the true ones (``mdm_jax.evaluation.video.frame_error``:
  pixels in [0, 1], the given frames left out) and, with a clip reader,
  ``<task>_direction_accuracy``: the generated frames alone move the way the held-out clip does
  (the direction its reference caption names; read on the whole clip, the given first and last
  frames of an interpolation would decide it)."""
  name = "frame_prediction"

  def applies(self, ctx):
    return any(ctx.trained(t) for t in tasks_lib.FRAME_TASKS) and bool(ctx.heldout)

  def __call__(self, ctx):
    truth = ctx.heldout_images
    labels = np.asarray([e["label"] for e in ctx.heldout])
    out = {}
    for task in tasks_lib.FRAME_TASKS:
      if not ctx.trained(task):
        continue
      t0 = time.time()
      kept = tasks_lib.frame_mask(task, ctx.frames).reshape(-1)
      clips = ctx.pipe.inpaint(truth, kept[:, None, None], labels=labels, seed=SEED)
      error = video_metrics.frame_error(clips, truth, ~kept)
      out[f"{task}_mse"], out[f"{task}_psnr"] = error["mse"], error["psnr"]
      if ctx.has_clip_reader:
        reader = ctx.clip_reader
        want = _named(reader.text_direction(e["captions"][0]) for e in ctx.heldout)
        moved = reader.read(clips[:, ~kept]).directions
        out[f"{task}_direction_accuracy"] = _mean(moved == want)
      out[f"{task}_seconds"] = time.time() - t0
    return out
