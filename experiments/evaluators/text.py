"""The text tasks on the held-out split: captions, VQA answers, and the likelihood of the
held-out captions."""
from __future__ import annotations

import dataclasses

import numpy as np

from experiments.evaluators.base import SEED, Evaluator
from experiments.workdir import vqa_prompts
from mdm_jax.evaluation import perplexity, text_metrics, vqa


class Captions(Evaluator):
  """One caption per held-out image, decoded at --caption_temperature (0: greedy, as
  captioning benchmarks decode): ``bleu4`` and ``cider_d`` against the image's reference
  captions; with a class reader, ``caption_accuracy``: the fraction that name the image's class
  and no other; ``caption_examples``: the first 10; ``caption_accuracy_sampled``: the accuracy
  of captions sampled at the config's ``sample.text_temperature`` when it differs.

  A clip model's held-out clips, with a clip reader: ``caption_accuracy`` is the fraction that
  name both the clip's class and its direction (the one its reference caption names) and no
  other, beside ``caption_digit_accuracy`` and ``caption_direction_accuracy``."""
  name = "captions"

  def applies(self, ctx):
    return ctx.trained("caption") and ctx.has_captions

  def _captions(self, ctx, temperature):
    sample_cfg = dataclasses.replace(ctx.run.trainer.sample_cfg, text_temperature=temperature)
    _, tokens = ctx.pipe.generate("caption", len(ctx.heldout), seed=SEED, sample_cfg=sample_cfg,
                                  images=ctx.heldout_images)
    return [ctx.tokenizer.decode(t) for t in tokens]

  def _accuracy(self, ctx, captions):
    """{caption_accuracy[, caption_digit_accuracy, caption_direction_accuracy]}; {} without a
    reader."""
    heldout = ctx.heldout
    if ctx.has_clip_reader:
      reader = ctx.clip_reader
      named = reader.text_agreement(
          captions, [e["label"] for e in heldout],
          [reader.text_direction(e["captions"][0]) for e in heldout])
      return dict(caption_accuracy=named["both"], caption_digit_accuracy=named["digit"],
                  caption_direction_accuracy=named["direction"])
    if ctx.has_reader:
      return {"caption_accuracy": float(np.mean(
          [ctx.reader.text_class(c) == e["label"] for c, e in zip(captions, heldout)]))}
    return {}

  def __call__(self, ctx):
    heldout, temperature = ctx.heldout, ctx.options.caption_temperature
    captions = self._captions(ctx, temperature)
    refs = [e["captions"] for e in heldout]
    out = {"bleu4": text_metrics.corpus_bleu(captions, refs),
           "cider_d": text_metrics.cider_d(captions, refs)[0],
           "caption_temperature": float(temperature), **self._accuracy(ctx, captions)}
    sampled = ctx.run.trainer.sample_cfg.text_temperature
    if "caption_accuracy" in out and sampled != temperature:
      out["caption_accuracy_sampled"] = self._accuracy(
          ctx, self._captions(ctx, sampled))["caption_accuracy"]
    out["caption_examples"] = [{"label": e["label"], "text": c}
                               for e, c in list(zip(heldout, captions))[:10]]
    return out


class VQA(Evaluator):
  """One question per held-out image: ``vqa_accuracy``, the VQA score against the dataset's
  answer, decoded at --vqa_temperature (0: greedy, as VQA benchmarks decode), with
  ``vqa_accuracy_by_question`` and ``vqa_examples``; ``vqa_accuracy_sampled``: the same at the
  config's ``sample.text_temperature`` when it differs."""
  name = "vqa"

  def applies(self, ctx):
    return ctx.trained("vqa") and ctx.has_questions

  def __call__(self, ctx):
    heldout, tok = ctx.heldout, ctx.tokenizer
    sample_cfg = ctx.run.trainer.sample_cfg
    seqs, plens = vqa_prompts(tok, heldout, ctx.run.trainer.model_cfg.max_text_len)
    references = [[e["answer"]] for e in heldout]
    decodings = {"vqa_accuracy": ctx.options.vqa_temperature}
    if sample_cfg.text_temperature != ctx.options.vqa_temperature:
      decodings["vqa_accuracy_sampled"] = sample_cfg.text_temperature
    out = {}
    for name, temperature in decodings.items():
      _, tokens = ctx.pipe.generate(
          "vqa", len(heldout), seed=SEED,
          sample_cfg=dataclasses.replace(sample_cfg, text_temperature=temperature),
          images=ctx.heldout_images, text=seqs, prompt_len=plens)
      answers = [tok.decode(t[p:]) for t, p in zip(tokens, plens)]
      out[name] = float(vqa.mean_vqa_accuracy(answers, references))
      if name == "vqa_accuracy":
        out["vqa_temperature"] = float(temperature)
        out["vqa_accuracy_by_question"] = vqa.accuracy_by_question(
            answers, references, [e["question"] for e in heldout])
        out["vqa_examples"] = [{"question": e["question"], "reference": e["answer"], "text": a}
                               for e, a in list(zip(heldout, answers))[:10]]
    return out


class TextLikelihood(Evaluator):
  """``text_bits_per_token`` and ``text_perplexity`` of the held-out captions (the first
  reference of each) from SEDD's bound (the Markov ablation's: the absorbing-chain ELBO), with
  --text_draws Monte-Carlo draws of the noise level per caption, over its tokens and eos."""
  name = "text_likelihood"

  def applies(self, ctx):
    return ctx.trained("text") and ctx.has_captions

  def __call__(self, ctx):
    draws = ctx.options.text_draws
    nll, counts = ctx.pipe.text_nll([e["captions"][0] for e in ctx.heldout], num_draws=draws,
                                    seed=SEED)
    return {"text_bits_per_token": float(nll.sum() / counts.sum() / np.log(2.0)),
            "text_perplexity": perplexity.perplexity_from_elbo(nll, counts),
            "text_perplexity_draws": draws}
