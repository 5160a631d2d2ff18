"""Digits metrics of the multimodal tasks, as pure functions of classifier readings and text.

The digits classifier (``digits_classifier``) reads generated images; these functions compare
its readings with the digit a text names:

  * ``text_to_image_accuracy``: images read as the digit their prompt names.
  * ``joint_consistency``: joint images read as the digit their own caption names (a caption
    naming no digit, or several, is inconsistent).
  * ``within_class_diversity``: per class, the mean per-pixel std of the samples over that of
    real images of the class, averaged over the classes.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digits_named(text: str) -> set[int]:
  """Digits a text names, as words ("seven") or numerals ("7")."""
  words = re.findall(r"[a-z]+|\d", text.lower())
  return {DIGIT_WORDS.index(w) if w in DIGIT_WORDS else int(w) for w in words
          if w in DIGIT_WORDS or w.isdigit()}


def digit_named(text: str) -> int | None:
  """The one digit ``text`` names; None when it names none or several."""
  named = digits_named(text)
  return next(iter(named)) if len(named) == 1 else None


def _readings(predicted, texts, what):
  predicted = np.asarray(predicted)
  if predicted.ndim != 1 or len(predicted) != len(texts) or not len(texts):
    raise ValueError(f"{what}: give one classifier reading per text (both non-empty), got "
                     f"readings of shape {predicted.shape} for {len(texts)} texts")
  return predicted


def text_to_image_accuracy(predicted: np.ndarray, prompts: Sequence[str], *,
                           text_class: Callable[[str], int | None] | None = None) -> float:
  """Fraction of images read as the digit their prompt names.

  Args:
    predicted: int (n,), the classifier's reading of each image.
    prompts: n prompts, each naming exactly one digit.
    text_class: the class a text names (None: none or several); default ``digit_named``.
  """
  predicted = _readings(predicted, prompts, "text_to_image_accuracy")
  wanted = [(text_class or digit_named)(p) for p in prompts]
  bad = [p for p, w in zip(prompts, wanted) if w is None]
  if bad:
    raise ValueError(f"prompt {bad[0]!r} names no digit or several: text-to-image accuracy "
                     "needs prompts that each name one digit")
  return float(np.mean(predicted == np.asarray(wanted)))


def joint_consistency(predicted: np.ndarray, captions: Sequence[str], *,
                      text_class: Callable[[str], int | None] | None = None) -> float:
  """Fraction of joint samples whose image is read as the one digit its caption names.

  Args:
    predicted: int (n,), the classifier's reading of each joint image.
    captions: the n captions generated with them; one naming no digit or several counts as
      inconsistent.
    text_class: the class a text names (None: none or several); default ``digit_named``.
  """
  predicted = _readings(predicted, captions, "joint_consistency")
  text_class = text_class or digit_named
  return float(np.mean([text_class(c) == int(p) for p, c in zip(predicted, captions)]))


def _class_std(images: np.ndarray) -> float:
  return float(np.asarray(images, np.float64).std(axis=0).mean())


def within_class_diversity(samples: np.ndarray, sample_labels: np.ndarray, real: np.ndarray,
                           real_labels: np.ndarray) -> float:
  """Mean over classes of std(samples of c) / std(real images of c), per pixel then averaged.

  Args:
    samples: (n, H, W, C) generated images, sample_labels (n,) their requested classes.
    real: (m, H, W, C) real images in the same value range, real_labels (m,).
  Returns:
    1 when the samples vary as much as the real digits, 0 when each class is one image
    repeated. Classes with fewer than 2 samples or 2 real images are left out.
  """
  samples, real = np.asarray(samples), np.asarray(real)
  sample_labels, real_labels = np.asarray(sample_labels), np.asarray(real_labels)
  if samples.shape[1:] != real.shape[1:]:
    raise ValueError(f"samples {samples.shape} and real images {real.shape} differ in shape")
  ratios = []
  for c in np.unique(sample_labels):
    s, r = samples[sample_labels == c], real[real_labels == c]
    if len(s) < 2 or len(r) < 2:
      continue
    ratios.append(_class_std(s) / max(_class_std(r), 1e-12))
  if not ratios:
    raise ValueError("within_class_diversity needs a class with >= 2 samples and >= 2 real "
                     "images: generate more per class")
  return float(np.mean(ratios))
