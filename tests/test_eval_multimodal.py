"""The multimodal digits metrics on constructed sample sets whose answer is known: real held-out
digits as "samples", with true, shuffled or wrong texts."""
from __future__ import annotations

import numpy as np
import pytest

from data import text_templates
from mdm_jax.evaluation import digits_classifier, multimodal


@pytest.fixture(scope="module")
def params():
  return digits_classifier.train_digits_classifier(seed=0)


@pytest.fixture(scope="module")
def real():
  _, _, x, y = digits_classifier.load_digits_split()
  return x, y


def test_digit_named():
  assert multimodal.digit_named("seven, a handwritten digit") == 7
  assert multimodal.digit_named("7 written by hand") == 7
  assert multimodal.digit_named("a handwritten digit") is None
  assert multimodal.digit_named("seven or 2") is None
  assert multimodal.digit_named("seven, as 7") == 7            # the same digit twice: one


def test_every_caption_template_names_its_digit():
  for d in range(10):
    for c in text_templates.digit_captions(d):
      assert multimodal.digit_named(c) == d, c


def test_text_to_image_accuracy_of_real_digits(params, real):
  x, y = real
  templates = text_templates.DIGIT_CAPTION_TEMPLATES
  prompts = [templates[i % len(templates)].format(word=text_templates.DIGIT_WORDS[d], num=d)
             for i, d in enumerate(y)]
  predicted = digits_classifier.digits_predict(params, x)
  got = multimodal.text_to_image_accuracy(predicted, prompts)
  assert got == pytest.approx(digits_classifier.digits_accuracy(params, x, y))
  assert got > 0.95
  shuffled = list(np.random.default_rng(0).permutation(prompts))
  assert abs(multimodal.text_to_image_accuracy(predicted, shuffled) - 0.1) < 0.05
  with pytest.raises(ValueError, match="names no digit or several"):
    multimodal.text_to_image_accuracy(predicted[:1], ["a handwritten digit"])
  with pytest.raises(ValueError, match="one classifier reading per text"):
    multimodal.text_to_image_accuracy(predicted[:2], prompts[:3])


def test_joint_consistency_of_real_digits(params, real):
  x, _ = real
  predicted = digits_classifier.digits_predict(params, x)
  words = text_templates.DIGIT_WORDS
  right = [f"{words[p]}, a handwritten digit" for p in predicted]
  wrong = [f"{(p + 1) % 10} written by hand" for p in predicted]
  both = [f"{words[p]} or {(p + 1) % 10}" for p in predicted]
  assert multimodal.joint_consistency(predicted, right) == 1.0
  assert multimodal.joint_consistency(predicted, wrong) == 0.0
  assert multimodal.joint_consistency(predicted, both) == 0.0
  assert multimodal.joint_consistency(predicted, ["a digit"] * len(predicted)) == 0.0
  half = right[:100] + wrong[100:200]
  assert multimodal.joint_consistency(predicted[:200], half) == 0.5


def test_within_class_diversity(real):
  x, y = real
  assert multimodal.within_class_diversity(x, y, x, y) == pytest.approx(1.0)
  # One image per class, repeated: no variation.
  firsts = np.stack([x[y == c][0] for c in range(10)])
  labels = np.repeat(np.arange(10), 5)
  assert multimodal.within_class_diversity(firsts[labels], labels, x, y) == 0.0
  # Hand formula: samples halfway to the class mean vary half as much.
  means = np.stack([x[y == c].mean(0) for c in range(10)])
  assert multimodal.within_class_diversity(
      (x + means[y]) / 2, y, x, y) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="differ in shape"):
    multimodal.within_class_diversity(x[:, :4], y, x, y)
