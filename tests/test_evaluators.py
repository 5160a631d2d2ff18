"""Each evaluator of experiments.evaluators on its own, with a stand-in run, pipeline and class
reader whose outputs are chosen here, so every score has a hand-counted value. The driver on a
real trained run: tests/test_api.py."""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from experiments import evaluators as ev
from mdm_jax import tasks as tasks_lib

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclasses.dataclass(frozen=True)
class SampleCfg:
  text_temperature: float = 1.0


class Tokenizer:
  """Token ids are word indices of a fixed vocabulary; decode joins the non-zero ones."""
  vocab = ("", "a", "digit", "<sep>", *DIGITS)

  def decode(self, ids):
    return " ".join(self.vocab[i] for i in ids if i)

  def ids(self, text, n=6):
    out = [self.vocab.index(w) for w in text.split()]
    return out + [0] * (n - len(out))

  def encode_vqa(self, question, answer, max_len):
    return np.asarray(self.ids("a a", max_len), np.int32), 2, None


def make_run(data="digits", weights=None, tokenizer=True, num_classes=10, frames=1):
  weights = weights or {t: 1.0 for t in tasks_lib.TASKS}
  config = types.SimpleNamespace(
      data=types.SimpleNamespace(name=data, data_dir=None),
      loss=types.SimpleNamespace(task_weights=[weights.get(t, 0.0) for t in tasks_lib.TASKS]))
  trainer = types.SimpleNamespace(
      model_cfg=types.SimpleNamespace(num_classes=num_classes, max_text_len=6, frames=frames),
      sample_cfg=SampleCfg())
  return types.SimpleNamespace(config=config, trainer=trainer, step=6,
                               tokenizer=Tokenizer() if tokenizer else None)


class Reader(ev.ClassReader):
  """Reads an image's class from its first pixel (class / 10 in [0, 1)); features: the pixels."""

  def predict(self, images):
    return np.round(np.asarray(images, np.float64)[:, 0, 0, 0] * 10).astype(int)

  def features(self, images):
    x = np.asarray(images, np.float32).reshape(len(images), -1)
    return x, np.zeros((len(images), 10), np.float32)

  def text_class(self, text):
    named = {DIGITS.index(w) for w in text.split() if w in DIGITS}
    return next(iter(named)) if len(named) == 1 else None

  def template_prompts(self, per_class):
    return [(t, t.format(DIGITS[d])) for d in range(10) for t in ("{} digit", "digit {}")
            for _ in range(per_class)]


def image_of(label, rng, size=4):
  x = rng.uniform(0, 1, (size, size, 1)).astype(np.float32)
  x[0, 0, 0] = label / 10
  return x


def context(run=None, reader=True, heldout=None, **options):
  ctx = ev.Context(run or make_run(), ev.Options(**options), workdir="/nonexistent",
                   out_dir="/nonexistent")
  ctx.heldout = heldout if heldout is not None else []
  if reader:
    ctx.reader = Reader()
  else:
    ctx.run.config.data.name = "no_reader_data"
  return ctx


def heldout_examples(n, rng):
  return [{"index": i, "image": image_of(i % 10, rng), "label": i % 10,
           "captions": [f"{DIGITS[i % 10]} digit", f"a {DIGITS[i % 10]}"],
           "question": "a digit", "answer": DIGITS[i % 10]} for i in range(n)]


# ----------------------------------------------------------------------------- which apply
def test_each_evaluator_is_chosen_by_what_the_run_and_its_data_provide():
  def names(ctx):
    return [e.name for e in ev.EVALUATORS if e.applies(ctx)]
  rng = np.random.default_rng(0)
  full = context(heldout=heldout_examples(4, rng))
  assert names(full) == ["class2img_samples", "class_accuracy", "t2i_accuracy",
                         "joint_consistency", "captions", "vqa", "text_likelihood"]
  # No class reader for the data: the classifier-read metrics drop out, captions stay.
  assert names(context(reader=False, heldout=heldout_examples(4, rng))) == [
      "class2img_samples", "captions", "vqa", "text_likelihood"]
  # No tokenizer (class-to-image data): text tasks drop out whatever --tasks says.
  assert names(context(run=make_run(tokenizer=False), heldout=heldout_examples(4, rng))) == [
      "class2img_samples", "class_accuracy"]
  # No questions in the data; a task weight of 0; --tasks; a reference; --samples.
  no_q = [dict(e, question=None) for e in heldout_examples(4, rng)]
  assert "vqa" not in names(context(heldout=no_q))
  assert "captions" not in names(context(run=make_run(weights={"class2img": 1.0,
                                                               "text": 1.0}),
                                         heldout=heldout_examples(4, rng)))
  assert names(context(heldout=heldout_examples(4, rng), tasks=("text",))) == [
      "text_likelihood"]
  assert names(context(tasks=("class2img",), ref_split="test",
                       inception_weights="w.npz")) == [
      "class2img_samples", "class_accuracy", "image_quality"]
  assert names(context(tasks=("class2img",), ref_split="test", inception_weights="w.npz",
                       samples="s.npz")) == ["image_quality"]


# ----------------------------------------------------------------------------- class2img
class Pipe:
  """Records the calls; each output is made from what the test asks for."""

  def __init__(self, rng, wrong=()):
    self.rng, self.wrong, self.calls = rng, set(wrong), []

  def generate(self, task, n, *, seed, labels=None, images=None, text=None, prompt_len=None,
               sample_cfg=None):
    self.calls.append((task, n, seed))
    if task == "class2img":   # sample i shows class labels[i], except those in `wrong`
      return np.stack([image_of((l + (i in self.wrong)) % 10, self.rng)
                       for i, l in enumerate(labels)]), None
    return None, self.tokens(task, n, sample_cfg)

  def tokens(self, task, n, sample_cfg):
    raise NotImplementedError


def test_class_samples_and_their_accuracy():
  rng = np.random.default_rng(0)
  ctx = context(heldout=heldout_examples(40, rng), per_class=3)
  ctx.pipe = Pipe(rng, wrong=(0, 7, 29))
  out = ev.ClassSamples()(ctx)
  assert ctx.pipe.calls == [("class2img", 30, ev.base.SEED)] and out["class2img_seconds"] >= 0
  images, labels = ctx.products["class2img"]
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 3))
  scores = ev.ClassAccuracy()(ctx)
  assert scores["class_accuracy"] == pytest.approx(27 / 30)
  for key in ("fid_digits", "is_digits", "precision", "recall", "diversity"):
    assert np.isfinite(scores[key])
  assert scores["is_digits"] == pytest.approx(1.0)        # uniform logits: IS = 1


def test_class_accuracy_against_its_own_held_out_images_is_perfect():
  """The held-out images as the samples: FID 0, precision = recall = 1, diversity 1."""
  rng = np.random.default_rng(1)
  heldout = heldout_examples(40, rng)
  ctx = context(heldout=heldout, per_class=4)
  ctx.products["class2img"] = (np.stack([e["image"] for e in heldout]),
                               np.asarray([e["label"] for e in heldout]))
  scores = ev.ClassAccuracy()(ctx)
  assert scores["class_accuracy"] == 1.0 and abs(scores["fid_digits"]) < 1e-6
  assert scores["precision"] == scores["recall"] == 1.0
  assert scores["diversity"] == pytest.approx(1.0)


@pytest.mark.parametrize("options,match", [(dict(per_class=1), "--per_class=1: the within"),
                                           (dict(num_heldout=3), "--num_heldout=3")])
def test_class_accuracy_refuses_counts_its_metrics_cannot_use(options, match):
  with pytest.raises(ev.EvaluateUsageError, match=match):
    ev.ClassAccuracy().check(context(**options))


# ----------------------------------------------------------------------------- t2i, joint
class ImagePipe:
  """t2i: the image of the class the prompt names, except for the prompts in `wrong` (class
  + 1); joint: images of classes `joint_classes` with `joint_captions`."""

  def __init__(self, rng, reader, wrong=(), joint_classes=(), joint_captions=()):
    self.rng, self.reader, self.wrong = rng, reader, set(wrong)
    self.joint_classes, self.joint_captions = joint_classes, joint_captions

  def text_to_image(self, prompts, seed):
    return np.stack([image_of((self.reader.text_class(p) + (p in self.wrong)) % 10, self.rng)
                     for p in prompts])

  def joint(self, n, seed):
    assert n == len(self.joint_classes)
    return (np.stack([image_of(c, self.rng) for c in self.joint_classes]),
            list(self.joint_captions))


def test_text_to_image_accuracy():
  rng = np.random.default_rng(2)
  heldout = heldout_examples(4, rng)       # prompts: "zero digit" ... "three digit"
  ctx = context(heldout=heldout, per_class=2)
  ctx.pipe = ImagePipe(rng, ctx.reader, wrong=("one digit", "five digit", "digit five"))
  out = ev.TextToImageAccuracy()(ctx)
  assert out["t2i_accuracy"] == pytest.approx(3 / 4)
  # Of each template's 20 prompts (10 classes, twice): "{} digit" has one and five wrong,
  # "digit {}" five.
  assert out["t2i_accuracy_templates"] == pytest.approx(34 / 40)
  assert out["t2i_accuracy_by_template"] == {"{} digit": pytest.approx(16 / 20),
                                             "digit {}": pytest.approx(18 / 20)}


def test_joint_consistency():
  rng = np.random.default_rng(3)
  captions = ["seven digit", "two digit", "a digit", "one two", "nine"] * 2
  classes = [7, 3, 2, 1, 9] * 2            # consistent: 1st and 5th of each five
  ctx = context(per_class=1)
  ctx.pipe = ImagePipe(rng, ctx.reader, joint_classes=classes, joint_captions=captions)
  out = ev.JointConsistency()(ctx)
  assert out["joint_consistency"] == pytest.approx(4 / 10)
  assert out["joint_examples"][0] == {"read_as": 7, "text": "seven digit"}


# ----------------------------------------------------------------------------- text tasks
class TextPipe(Pipe):
  """caption / vqa: the image's class word, except for the indices in `wrong` and, sampled at
  a temperature above 0, those in `wrong_sampled`; text_nll: the given bounds. `temperatures`:
  each call's text temperature."""

  def __init__(self, rng, heldout, wrong=(), nll=None, wrong_sampled=()):
    super().__init__(rng, wrong)
    self.heldout, self.nll, self.temperatures = heldout, nll, []
    self.wrong_sampled = set(wrong_sampled)

  def tokens(self, task, n, sample_cfg):
    tok = Tokenizer()
    self.temperatures.append(sample_cfg.text_temperature)
    wrong = self.wrong | (self.wrong_sampled if sample_cfg.text_temperature > 0 else set())
    words = [DIGITS[(e["label"] + (i in wrong)) % 10] for i, e in enumerate(self.heldout)]
    if task == "caption":   # the first reference, or a caption of the wrong digit
      return np.stack([tok.ids(e["captions"][0] if i not in wrong else f"a {w} digit")
                       for i, (e, w) in enumerate(zip(self.heldout, words))])
    return np.stack([tok.ids(f"a a {w}") for w in words])   # the answer after the prompt

  def text_nll(self, texts, num_draws, seed):
    assert texts == [e["captions"][0] for e in self.heldout]
    return self.nll


def test_captions():
  rng = np.random.default_rng(4)
  heldout = [dict(e, captions=[f"a {DIGITS[e['label']]} digit a digit"])   # BLEU-4: >= 4 words
             for e in heldout_examples(5, rng)]
  ctx = context(heldout=heldout)            # greedy captions; the config samples at 1.0
  ctx.heldout_images = np.stack([e["image"] for e in heldout])
  ctx.pipe = TextPipe(rng, heldout)
  out = ev.Captions()(ctx)                  # every caption is its first reference
  assert out["bleu4"] == pytest.approx(1.0) and out["caption_accuracy"] == 1.0
  assert out["caption_temperature"] == 0.0 and ctx.pipe.temperatures == [0.0, 1.0]
  ctx.pipe = TextPipe(rng, heldout, wrong=(1, 3), wrong_sampled=(0,))
  out = ev.Captions()(ctx)
  assert out["caption_accuracy"] == pytest.approx(3 / 5)
  assert out["caption_accuracy_sampled"] == pytest.approx(2 / 5)
  assert out["caption_examples"][0]["text"] == heldout[0]["captions"][0]   # the greedy ones
  # Decoded at the config's own temperature: one pass, no sampled score beside it.
  at_config = context(heldout=heldout, caption_temperature=1.0)
  at_config.heldout_images = ctx.heldout_images
  at_config.pipe = TextPipe(rng, heldout, wrong_sampled=(0,))
  out = ev.Captions()(at_config)
  assert out["caption_accuracy"] == pytest.approx(4 / 5) and "caption_accuracy_sampled" not in out
  assert at_config.pipe.temperatures == [1.0]
  no_reader = context(reader=False, heldout=heldout)
  no_reader.heldout_images, no_reader.pipe = ctx.heldout_images, TextPipe(rng, heldout)
  out = ev.Captions()(no_reader)
  assert "caption_accuracy" not in out and "caption_accuracy_sampled" not in out
  assert no_reader.pipe.temperatures == [0.0]     # no accuracy to compare: one pass


@pytest.mark.parametrize("vqa_temperature,sampled", [(0.0, True), (1.0, False)])
def test_vqa(vqa_temperature, sampled):
  rng = np.random.default_rng(5)
  heldout = heldout_examples(4, rng)
  ctx = context(heldout=heldout, vqa_temperature=vqa_temperature)
  ctx.heldout_images = np.stack([e["image"] for e in heldout])
  ctx.pipe = TextPipe(rng, heldout, wrong=(2,))
  out = ev.VQA()(ctx)
  assert out["vqa_accuracy"] == pytest.approx(3 / 4)
  assert out["vqa_accuracy_by_question"] == {"a digit": pytest.approx(3 / 4)}
  assert out["vqa_examples"][2] == {"question": "a digit", "reference": "two", "text": "three"}
  assert ("vqa_accuracy_sampled" in out) == sampled
  assert ctx.pipe.temperatures == ([vqa_temperature, 1.0] if sampled else [vqa_temperature])


def test_text_likelihood():
  rng = np.random.default_rng(6)
  heldout = heldout_examples(2, rng)
  ctx = context(heldout=heldout, text_draws=3)
  ctx.pipe = TextPipe(rng, heldout, nll=(np.array([2.0, 4.0]), np.array([1, 3])))
  out = ev.TextLikelihood()(ctx)
  assert out["text_bits_per_token"] == pytest.approx(6 / 4 / np.log(2))
  assert out["text_perplexity"] == pytest.approx(np.exp(6 / 4))
  assert out["text_perplexity_draws"] == 3


# ----------------------------------------------------------------------------- image quality
class PixelFeatures:
  """A stand-in InceptionV3: the pixels as features (uint8 images), uniform logits."""

  def features(self, images):
    x = np.asarray(images, np.float32).reshape(len(images), -1) / 255
    return x, np.zeros((len(images), 10), np.float32)


def test_image_quality_against_a_reference_batch_and_its_cache(tmp_path):
  """The reference scored against itself: FID ~0, precision = recall = 1; its statistics are
  cached in out_dir, and a cache in the (read-only) workdir is read, not recomputed."""
  rng = np.random.default_rng(7)
  ref = tmp_path / "ref.npz"
  np.savez(ref, arr_0=rng.integers(0, 256, (12, 4, 4, 1), dtype=np.uint8))
  weights = tmp_path / "weights.npz"
  np.savez(weights, w=np.zeros(1))
  out_dir, workdir = tmp_path / "out", tmp_path / "wd"
  ctx = ev.Context(make_run(), ev.Options(tasks=(), ref_batch=str(ref), samples=str(ref),
                                          inception_weights=str(weights), batch=5),
                   workdir=str(workdir), out_dir=str(out_dir), inception=PixelFeatures())
  first = ev.ImageQuality()(ctx)
  assert abs(first["fid"]) < 1e-6 and first["inception_score"] == pytest.approx(1.0)
  assert first["precision_inception"] == first["recall_inception"] == 1.0
  assert first["num_samples"] == first["num_reference"] == 12
  assert not first["reference_cached"] and first["reference_cache"].startswith(str(out_dir))
  workdir.mkdir()
  (out_dir / "reference_stats").rename(workdir / "reference_stats")
  second = ev.ImageQuality()(ctx)
  assert second["reference_cached"] and second["reference_cache"].startswith(str(workdir))
  assert second["fid"] == first["fid"]


def test_image_quality_refuses_a_run_with_nothing_to_score():
  ctx = context(run=make_run(weights={"caption": 1.0}), tasks=("class2img",),
                ref_split="test", inception_weights="w.npz")
  with pytest.raises(ev.EvaluateUsageError, match="did not train class2img"):
    ev.ImageQuality().check(ctx)


# ----------------------------------------------------------------------------- clips
WAYS = ("up", "down", "left", "right")


def clip_of(label, direction, frames=4, rng=None, frame_labels=None):
  """float (frames, 2, 2, 1): pixel (0, 0) of frame t is its class / 10, pixel (0, 1) of every
  frame (direction + 1) / 10 (0: still); the rest is noise."""
  rng = rng or np.random.default_rng(0)
  x = rng.uniform(0.5, 1, (frames, 2, 2, 1)).astype(np.float32)
  x[:, 0, 0, 0] = np.asarray(frame_labels if frame_labels is not None else [label] * frames) / 10
  x[:, 0, 1, 0] = (direction + 1) / 10
  return x


class StandInClipReader(ev.ClipReader):
  """Reads what ``clip_of`` wrote; text names WAYS and DIGITS words."""
  directions = WAYS

  def read(self, clips):
    x = np.asarray(clips, np.float64)
    frame_digits = np.round(x[:, :, 0, 0, 0] * 10).astype(int)
    digits = np.asarray([np.bincount(f.clip(0), minlength=10).argmax() for f in frame_digits])
    return ev.ClipReading(frame_digits=frame_digits, digits=digits,
                          consistent=(frame_digits == frame_digits[:, :1]).all(axis=1),
                          directions=np.round(x[:, 0, 0, 1, 0] * 10).astype(int) - 1)

  def text_class(self, text):
    return Reader().text_class(text)

  def text_direction(self, text):
    named = [k for k, w in enumerate(WAYS) if w in text.split()]
    return named[0] if len(named) == 1 else None

  def text_agreement(self, texts, classes, directions):
    digit = np.asarray([self.text_class(t) == c for t, c in zip(texts, classes)])
    way = np.asarray([self.text_direction(t) == d for t, d in zip(texts, directions)])
    return {"digit": digit.mean(), "direction": way.mean(), "both": (digit & way).mean()}


def clip_context(n=0, **options):
  """A clip model's run (4 frames) on data with a clip reader; held-out clip i shows digit
  i % 10 moving WAYS[i % 4], with two captions naming both."""
  ctx = context(run=make_run(data="clips", frames=4), reader=False, **options)
  ctx.run.config.data.name = "clips"
  ctx.clip_reader = StandInClipReader()
  ev.base.CLIP_READERS["clips"] = None    # has_clip_reader: the data has one
  ctx.heldout = [{"index": i, "image": clip_of(i % 10, i % 4), "label": i % 10,
                  "captions": [f"{DIGITS[i % 10]} moving {WAYS[i % 4]}",
                               f"{DIGITS[i % 10]} drifts {WAYS[i % 4]} slowly"],
                  "question": "a digit", "answer": DIGITS[i % 10]} for i in range(n)]
  ctx.heldout_images = np.stack([e["image"] for e in ctx.heldout]) if n else None
  return ctx


@pytest.fixture
def clip_readers(monkeypatch):
  monkeypatch.setattr(ev.base, "CLIP_READERS", dict(ev.base.CLIP_READERS))


def test_a_clip_run_gets_the_video_evaluators_and_no_image_ones(clip_readers):
  names = [e.name for e in ev.EVALUATORS if e.applies(clip_context(4))]
  assert names == ["class2img_samples", "class2video_accuracy", "t2v_accuracy",
                   "video_joint_consistency", "captions", "vqa", "text_likelihood",
                   "frame_prediction"]
  # A reference scores images: refused for clips, before anything is sampled.
  ctx = clip_context(4, tasks=("class2img",), ref_split="test", inception_weights="w.npz")
  with pytest.raises(ev.EvaluateUsageError, match="clip model's run.*drop them"):
    ev.ImageQuality().check(ctx)
  # --tasks picks the frame tasks too.
  assert [e.name for e in ev.EVALUATORS if e.applies(clip_context(4, tasks=("predict",)))] == [
      "frame_prediction"]


def test_class_to_video_accuracy(clip_readers):
  ctx = clip_context()
  labels = np.asarray([3, 3, 5, 5])
  ctx.products["class2img"] = (np.stack([
      clip_of(3, 0), clip_of(3, -1, frame_labels=[3, 3, 3, 8]),   # right, half consistent
      clip_of(5, 2, frame_labels=[6, 6, 5, 6]), clip_of(5, -1)]), labels)   # wrong; still
  out = ev.ClassToVideoAccuracy()(ctx)
  assert out == {"class2video_digit_accuracy": 0.75, "class2video_consistency": 0.5,
                 "class2video_moving": 0.5}


class ClipPipe:
  """t2v: the clip the prompt names, with the digit + 1 for prompts in `wrong_digit` and the
  next direction for those in `wrong_way`; joint: the given clips and captions; inpaint: the
  given clips, their generated frames offset by `offset`."""

  def __init__(self, reader, wrong_digit=(), wrong_way=(), joint=None, offset=0.0):
    self.reader, self.wrong_digit, self.wrong_way = reader, set(wrong_digit), set(wrong_way)
    self.joint_out, self.offset, self.prompts = joint, offset, []

  def text_to_image(self, prompts, seed):
    self.prompts += prompts
    return np.stack([clip_of((self.reader.text_class(p) + (i in self.wrong_digit)) % 10,
                             (self.reader.text_direction(p) + (i in self.wrong_way)) % 4)
                     for i, p in enumerate(prompts)])

  def joint(self, n, seed):
    assert n == len(self.joint_out[1])
    return self.joint_out

  def inpaint(self, clips, mask, labels, seed):
    assert mask.shape == (4, 1, 1)
    return np.where(mask[..., None], clips, clips - self.offset)


def test_text_to_video_accuracy(clip_readers):
  ctx = clip_context(8)
  ctx.pipe = ClipPipe(ctx.clip_reader, wrong_digit=(1, 2), wrong_way=(2, 5, 6))
  out = ev.TextToVideoAccuracy()(ctx)
  # Held-out clip i's caption template i mod 2.
  assert ctx.pipe.prompts == [e["captions"][i % 2] for i, e in enumerate(ctx.heldout)]
  assert (out["t2v_digit_accuracy"], out["t2v_direction_accuracy"],
          out["t2v_accuracy"]) == (6 / 8, 5 / 8, 4 / 8)
  assert out["t2v_consistency"] == 1.0


def test_video_joint_consistency(clip_readers):
  ctx = clip_context(per_class=1)
  clips = np.stack([clip_of(d, m) for d, m in [(7, 2), (7, 2), (7, -1), (1, 0), (4, 1)] * 2])
  captions = ["seven moving left", "seven moving up", "seven moving left",
              "one two moving up", "four down"] * 2
  ctx.pipe = ClipPipe(ctx.clip_reader, joint=(clips, captions))
  out = ev.VideoJointConsistency()(ctx)
  assert (out["video_joint_consistency"], out["video_joint_digit_consistency"],
          out["video_joint_direction_consistency"]) == (4 / 10, 8 / 10, 6 / 10)
  assert out["video_joint_examples"][2] == {"read_as": 7, "moving": "still",
                                            "text": "seven moving left"}


def test_captions_of_clips_name_the_digit_and_the_direction(clip_readers):
  ctx = clip_context(4)

  class CaptionPipe:
    def generate(self, task, n, *, seed, images, sample_cfg):
      texts = ["zero moving up", "one moving up", "two drifts left", "three moving up"]
      return None, np.stack([Tokenizer2.ids(t) for t in texts])

  class Tokenizer2:
    vocab = ("", "moving", "drifts", *WAYS, *DIGITS)

    @classmethod
    def ids(cls, text):
      return [cls.vocab.index(w) for w in text.split()] + [0] * 2

    def decode(self, ids):
      return " ".join(self.vocab[i] for i in ids if i)

  ctx.run.tokenizer, ctx.pipe = Tokenizer2(), CaptionPipe()
  out = ev.Captions()(ctx)       # truth: zero up, one down, two left, three right
  assert (out["caption_accuracy"], out["caption_digit_accuracy"],
          out["caption_direction_accuracy"]) == (2 / 4, 1.0, 2 / 4)
  assert out["caption_accuracy_sampled"] == 2 / 4    # the same captions at the config's 1.0


def test_frame_prediction_error_on_the_generated_frames(clip_readers):
  ctx = clip_context(5)
  ctx.pipe = ClipPipe(ctx.clip_reader, offset=0.1)
  out = ev.FramePrediction()(ctx)
  # [-1, 1] clips: an offset of 0.1 is 0.05 in [0, 1] units, on every generated pixel.
  for task in ("predict", "interpolate"):
    assert out[f"{task}_mse"] == pytest.approx(0.05 ** 2)
    assert out[f"{task}_psnr"] == pytest.approx(10 * np.log10(1 / 0.05 ** 2))
    # The offset moved the direction pixel of the generated frames: read as the one before.
    assert out[f"{task}_direction_accuracy"] == 0.0
  ctx.pipe = ClipPipe(ctx.clip_reader, offset=0.0)
  out = ev.FramePrediction()(ctx)
  assert out["predict_direction_accuracy"] == out["interpolate_direction_accuracy"] == 1.0
