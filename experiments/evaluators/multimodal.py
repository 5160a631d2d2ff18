"""t2i and joint, read by the dataset's classifier: the images made from a caption show the
class it names; the images made with their caption agree with it."""
from __future__ import annotations

import time

import numpy as np

from experiments.evaluators.base import SEED, Evaluator
from mdm_jax.evaluation import multimodal


class TextToImageAccuracy(Evaluator):
  """``t2i_accuracy``: the fraction of images generated from the held-out captions that the
  classifier reads as the class the caption names; ``t2i_accuracy_templates``: the same with
  every caption template of every class as prompts (``per_class // templates`` each, >= 1), and
  ``t2i_accuracy_by_template`` that per template (a weak way of naming the class, such as the
  digits' numerals, shows there)."""
  name = "t2i_accuracy"

  def applies(self, ctx):
    return ctx.trained("t2i") and ctx.has_reader and ctx.has_captions

  def __call__(self, ctx):
    reader = ctx.reader
    t0 = time.time()
    pairs = reader.template_prompts(ctx.options.per_class)
    prompt_sets = {"t2i_accuracy": [e["captions"][0] for e in ctx.heldout],
                   "t2i_accuracy_templates": [prompt for _, prompt in pairs]}
    out, read = {}, {}
    for name, prompts in prompt_sets.items():
      read[name] = reader.predict(ctx.pipe.text_to_image(prompts, seed=SEED))
      out[name] = multimodal.text_to_image_accuracy(read[name], prompts,
                                                    text_class=reader.text_class)
    by_template = {}
    for (template, prompt), r in zip(pairs, read["t2i_accuracy_templates"]):
      by_template.setdefault(template, []).append(reader.text_class(prompt) == int(r))
    out["t2i_accuracy_by_template"] = {t: float(np.mean(oks)) for t, oks in by_template.items()}
    out["t2i_seconds"] = time.time() - t0
    return out


class JointConsistency(Evaluator):
  """``joint_consistency``: over ``per_class x classes`` image + caption pairs generated
  together, the fraction whose image the classifier reads as the one class its caption names
  (a caption naming none or several is inconsistent); ``joint_examples``: the first 10."""
  name = "joint_consistency"

  def applies(self, ctx):
    return ctx.trained("joint") and ctx.has_reader

  def __call__(self, ctx):
    reader = ctx.reader
    t0 = time.time()
    images, captions = ctx.pipe.joint(ctx.options.per_class * ctx.num_classes, seed=SEED)
    predicted = reader.predict(images)
    return {"joint_consistency": multimodal.joint_consistency(predicted, captions,
                                                              text_class=reader.text_class),
            "joint_seconds": time.time() - t0,
            "joint_examples": [{"read_as": int(p), "text": c}
                               for p, c in list(zip(predicted, captions))[:10]]}
