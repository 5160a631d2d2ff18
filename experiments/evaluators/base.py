"""What evaluators share: the options, the context of one evaluation, the evaluator interface,
and the datasets' own class readers.

An evaluator is chosen by what the run and its data provide (a trained task, held-out captions,
questions, a classifier of the dataset's classes, a reference set), never by the dataset's
name; ``check`` runs for every chosen evaluator before any sample is drawn.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zipfile

from absl import logging
from etils import epath
import numpy as np

from experiments import sample_io
from mdm_jax import api
from mdm_jax import tasks as tasks_lib
from mdm_jax.evaluation import digits_classifier, multimodal
from mdm_jax.evaluation import video as video_metrics

K = 3         # precision / recall's k-NN: each set needs more than K images
SEED = 1234   # every evaluator samples with it (each call seeded by it and its sample index)
# Every trained task, and a clip model's inpainting in time (the class2img network task).
EVAL_TASKS = tasks_lib.TASKS + tasks_lib.FRAME_TASKS


class EvaluateUsageError(ValueError):
  """A bad input, option or output folder, found before any sample is drawn."""


@dataclasses.dataclass(frozen=True)
class Options:
  """experiments.evaluate's options (its flags of the same names)."""
  per_class: int = 30
  num_heldout: int | None = None
  batch: int = 100
  tasks: tuple[str, ...] = EVAL_TASKS
  caption_temperature: float = 0.0
  vqa_temperature: float = 0.0
  text_draws: int = 16
  ref_batch: str | None = None
  ref_split: str | None = None
  ref_num: int | None = None
  inception_weights: str | None = None
  samples: str | None = None

  @property
  def has_ref(self) -> bool:
    return self.ref_batch is not None or self.ref_split is not None


class Context:
  """One evaluation: the reopened run, the options, where to cache and write, the lazily built
  sampling pipeline and held-out examples, and ``products``: what one evaluator made for the
  ones after it (``"class2img"``: the class-conditional samples and their labels)."""

  def __init__(self, run, options: Options, *, workdir, out_dir, inception=None):
    self.run, self.options = run, options
    self.workdir, self.out_dir = workdir, out_dir
    self.inception = inception   # the InceptionV3 feature extractor, with --inception_weights
    self.products = {}

  @property
  def config(self):
    return self.run.config

  @property
  def tokenizer(self):
    return self.run.tokenizer

  @property
  def num_classes(self) -> int:
    return self.run.trainer.model_cfg.num_classes

  @property
  def frames(self) -> int:
    """Frames of the model's visual input: 1 for images, T for clips."""
    return self.run.trainer.model_cfg.frames

  def trained(self, task: str) -> bool:
    """``task`` is asked for (--tasks), was trained (weight > 0), and its text exists (a run
    without a tokenizer trained class-to-image only). A frame task (predict, interpolate) is
    class2img's network task on a clip model."""
    weights = dict(zip(tasks_lib.TASKS, self.config.loss.task_weights))
    if task in tasks_lib.FRAME_TASKS:
      return task in self.options.tasks and self.frames > 1 and weights["class2img"] > 0
    return (task in self.options.tasks and weights[task] > 0
            and (self.tokenizer is not None or task in tasks_lib.servable(())))

  @functools.cached_property
  def pipe(self) -> api.Pipeline:
    return api.Pipeline(self.run, batch_size=self.options.batch)

  def _examples(self, num):
    from data import pipeline
    d = self.config.data
    return pipeline.eval_examples(d.name, split=pipeline.heldout_split(d.name), num=num,
                                  image_size=d.image_size, channels=d.channels,
                                  data_dir=d.data_dir, frames=self.frames)

  @functools.cached_property
  def heldout(self) -> list[dict]:
    """The first --num_heldout held-out examples (``data.pipeline.eval_examples``)."""
    return self._examples(self.options.num_heldout)

  @functools.cached_property
  def heldout_images(self) -> np.ndarray:
    """float32 (n, S, S, C) in [-1, 1]; a clip model's clips (n, T, S, S, C)."""
    return np.stack([e["image"] for e in self.heldout])

  @functools.cached_property
  def all_heldout(self) -> list[dict]:
    """Every held-out example (--num_heldout may leave too few of a class)."""
    return self.heldout if self.options.num_heldout is None else self._examples(None)

  @property
  def has_captions(self) -> bool:
    return bool(self.heldout) and bool(self.heldout[0]["captions"])

  @property
  def has_questions(self) -> bool:
    return bool(self.heldout) and self.heldout[0]["question"] is not None

  @property
  def has_reader(self) -> bool:
    """An image model's data has a class reader (``CLASS_READERS``)."""
    return self.frames == 1 and self.config.data.name in CLASS_READERS

  @functools.cached_property
  def reader(self) -> "ClassReader":
    """The dataset's own class reader (``CLASS_READERS``), built (or read from its cache) at
    first use."""
    return CLASS_READERS[self.config.data.name](self)

  @property
  def has_clip_reader(self) -> bool:
    """A clip model's data has a clip reader (``CLIP_READERS``)."""
    return self.frames > 1 and self.config.data.name in CLIP_READERS

  @functools.cached_property
  def clip_reader(self) -> "ClipReader":
    """The clip dataset's own reader (``CLIP_READERS``), built at first use."""
    return CLIP_READERS[self.config.data.name](self)


class Evaluator:
  """One task or metric family. ``applies``: whether the run and its data provide what it needs
  (cheap; no sampling); ``check``: refuse what cannot work, before any evaluator samples;
  ``__call__``: sample and score, returning eval.json entries."""
  name: str = ""

  def applies(self, ctx: Context) -> bool:
    raise NotImplementedError

  def check(self, ctx: Context) -> None:
    del ctx

  def __call__(self, ctx: Context) -> dict:
    raise NotImplementedError


def try_to_cache(save, path) -> None:
  """A cache that cannot be written (disk full, ...) costs the next run time, not this one's
  results: a warning, not an error."""
  try:
    save()
  except OSError as e:
    logging.warning("could not cache %s (%s: %s); it is computed again next time", path,
                    type(e).__name__, e)


# ----------------------------------------------------------------------------- class readers
class ClassReader:
  """A dataset's own reading of its classes: a classifier of its images (with the features
  its FID-like metrics use) and the class a text names, so that generated images and texts can
  be checked against the class or caption they were asked for."""

  def predict(self, images: np.ndarray) -> np.ndarray:
    """int (n,): the class of each image (uint8 or [-1, 1] floats)."""
    raise NotImplementedError

  def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, d), logits (n, classes))."""
    raise NotImplementedError

  def text_class(self, text: str) -> int | None:
    """The one class ``text`` names; None when it names none or several."""
    raise NotImplementedError

  def template_prompts(self, per_class: int) -> list[tuple[str, str]]:
    """(template, prompt) pairs: every caption template of every class, ``max(1, per_class //
    templates)`` of each, class by class."""
    raise NotImplementedError


DIGITS_CLASSIFIER = "digits_classifier.npz"


def digits_classifier_params(out_dir, workdir=None):
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
  try_to_cache(lambda: (digits_classifier.save_digits_classifier(params, os.fspath(tmp)),
                        tmp.replace(path)), path)
  return params


class DigitsReader(ClassReader):
  """The digits: an MLP trained on the real digits' training split (97-98% on held-out real
  digits; cached as ``digits_classifier.npz``), and digit words / numerals in text."""

  def __init__(self, params):
    self.params = params
    self._features = digits_classifier.DigitsFeatureExtractor(params)

  @classmethod
  def for_context(cls, ctx: Context) -> "DigitsReader":
    return cls(digits_classifier_params(ctx.out_dir, ctx.workdir))

  def predict(self, images):
    return digits_classifier.digits_predict(self.params, images)

  def features(self, images):
    return self._features.features(images)

  def text_class(self, text):
    return multimodal.digit_named(text)

  def template_prompts(self, per_class):
    from data import text_templates
    templates = text_templates.DIGIT_CAPTION_TEMPLATES
    repeats = max(1, per_class // len(templates))
    return [(t, t.format(word=text_templates.DIGIT_WORDS[d], num=d))
            for d in range(10) for t in templates for _ in range(repeats)]


# Datasets that come with a class reader: data name -> its factory (taking the Context).
CLASS_READERS = {"digits": DigitsReader.for_context}


# ----------------------------------------------------------------------------- clip readers
@dataclasses.dataclass(frozen=True)
class ClipReading:
  """What a clip reader reads in N clips of T frames.

  Attributes:
    frame_digits: int32 (N, T), each frame's class (-1: a frame without ink).
    digits: int32 (N,), each clip's majority class over its frames (-1: no frame read).
    consistent: bool (N,), every frame read as the same class.
    directions: int32 (N,), each clip's direction of motion, an index into the reader's
      ``directions`` (-1: still, or fewer than two frames with ink).
  """
  frame_digits: np.ndarray
  digits: np.ndarray
  consistent: np.ndarray
  directions: np.ndarray


class ClipReader:
  """A clip dataset's own reading of its clips (each frame's class, the clip's class, its
  direction of motion) and of its text (the class and the direction a text names), so that
  generated clips and texts can be checked against what they were asked for and against each
  other. ``directions``: the direction words, in the order of the data's direction indices."""
  directions: tuple[str, ...] = ()

  def read(self, clips: np.ndarray) -> ClipReading:
    """Clips (n, T, H, W, C), uint8 or [-1, 1] floats."""
    raise NotImplementedError

  def text_class(self, text: str) -> int | None:
    """The one class ``text`` names; None when it names none or several."""
    raise NotImplementedError

  def text_direction(self, text: str) -> int | None:
    """The one direction ``text`` names (an index into ``directions``); None when it names
    none or several."""
    raise NotImplementedError

  def text_agreement(self, texts, classes, directions) -> dict[str, float]:
    """{"digit", "direction", "both"}: the fractions of ``texts`` that name their class
    (``classes``: int (n,)), their direction (``directions``: int (n,), -1 or None for none)
    and both, each alone."""
    raise NotImplementedError

  def direction_name(self, direction: int) -> str:
    return self.directions[direction] if direction >= 0 else "still"


class MovingDigitsReader(ClipReader):
  """The moving digits: the digits classifier (``DigitsReader``'s, cached as
  ``digits_classifier.npz``) reads each frame's 8x8 window around its ink
  (``mdm_jax.evaluation.video``), the clip's direction is its ink's centre-of-mass motion, and
  text names digits as words or numerals and the directions by ``moving_digits.DIRECTIONS``."""

  def __init__(self, params):
    from data import moving_digits
    self.params = params
    self.directions = tuple(moving_digits.DIRECTIONS)
    self.steps = tuple(moving_digits.DIRECTION_STEPS)

  @classmethod
  def for_context(cls, ctx: Context) -> "MovingDigitsReader":
    return cls(digits_classifier_params(ctx.out_dir, ctx.workdir))

  def read(self, clips):
    frame_digits = video_metrics.read_frames(self.params, clips)
    return ClipReading(frame_digits=frame_digits,
                       digits=video_metrics.clip_digits(frame_digits),
                       consistent=video_metrics.temporally_consistent(frame_digits),
                       directions=video_metrics.motion_directions(clips, self.steps))

  def text_class(self, text):
    return multimodal.digit_named(text)

  def text_direction(self, text):
    return video_metrics.direction_named(text, self.directions)

  def text_agreement(self, texts, classes, directions):
    directions = [video_metrics.STILL if d is None else d for d in directions]
    return video_metrics.caption_accuracy(texts, classes, directions, self.directions)


# Clip datasets that come with a clip reader: data name -> its factory (taking the Context).
CLIP_READERS = {"moving_digits": MovingDigitsReader.for_context}
