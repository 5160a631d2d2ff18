"""Bundled digits: the split, the caption templates and the VQA answers."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from data import digits
from data import text_templates
import subproc

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven",
         "eight", "nine"]


def test_split_sizes_disjoint_cover_and_stratified():
  train, test = digits.split_indices("train"), digits.split_indices("test")
  assert (len(train), len(test)) == (1500, 297)
  assert not set(train) & set(test)
  assert sorted(np.concatenate([train, test])) == list(range(1797))
  target = sk_datasets.load_digits().target
  # Stratified: every class has 297 * share +- 1 test images.
  want = np.bincount(target) * 297 / 1797
  assert np.all(np.abs(np.bincount(target[test]) - want) <= 1)


def test_split_is_sklearns_stratified_split():
  """The written-out split (data/digits_split.py) is scikit-learn's, computed here."""
  target = sk_datasets.load_digits().target
  train, test = model_selection.train_test_split(
      np.arange(len(target)), test_size=297, stratify=target, random_state=0)
  np.testing.assert_array_equal(digits.split_indices("train"), np.sort(train))
  np.testing.assert_array_equal(digits.split_indices("test"), np.sort(test))


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_matches_sklearn(split):
  raw = sk_datasets.load_digits()
  images, labels = digits.load(split)
  idx = digits.split_indices(split)
  assert images.shape == (len(idx), 8, 8) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, raw.target[idx])
  np.testing.assert_allclose(images / 255.0, raw.images[idx] / 16.0,
                             atol=0.5 / 255)


def test_reading_the_digits_does_not_import_sklearn():
  """A CLI on the digits starts without scikit-learn (over a second of import)."""
  code = ("import sys; from data import digits; x, y = digits.load('train'); "
          "print(len(x), 'sklearn' in sys.modules)")
  proc = subproc.run([sys.executable, "-c", code])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["1500", "False"]


def test_captions_varied_and_name_the_digit():
  for d in range(10):
    caps = digits.captions(d)
    assert len(set(caps)) >= 8
    for c in caps:
      words = re.findall(r"[a-z]+|\d+", c)
      assert words[0] in (WORDS[d], str(d)), c  # the digit leads every caption
      # no other digit is mentioned
      others = [w for w in words if w in WORDS or w.isdigit()]
      assert others in ([WORDS[d]], [str(d)]), c
  assert len(text_templates.DIGIT_CAPTION_TEMPLATES) >= 8


# Hand-written answers for three digits.
EXPECTED = {
    7: {"what digit is this?": "seven", "what number is shown?": "seven",
        "which digit is written here?": "seven", "is the digit even?": "no",
        "is the digit odd?": "yes", "is it larger than five?": "yes",
        "is it smaller than five?": "no", "is it a prime number?": "yes"},
    4: {"what digit is this?": "four", "what number is shown?": "four",
        "which digit is written here?": "four", "is the digit even?": "yes",
        "is the digit odd?": "no", "is it larger than five?": "no",
        "is it smaller than five?": "yes", "is it a prime number?": "no"},
    5: {"what digit is this?": "five", "what number is shown?": "five",
        "which digit is written here?": "five", "is the digit even?": "no",
        "is the digit odd?": "yes", "is it larger than five?": "no",
        "is it smaller than five?": "no", "is it a prime number?": "yes"},
}


def test_vqa_answers_follow_the_label():
  for d, want in EXPECTED.items():
    assert dict(digits.qa_pairs(d)) == want
  for d in range(10):
    qa = dict(digits.qa_pairs(d))
    assert qa["what digit is this?"] == WORDS[d]
    assert qa["is the digit even?"] == ("yes" if d in (0, 2, 4, 6, 8) else "no")
    assert qa["is it larger than five?"] == ("yes" if d in (6, 7, 8, 9)
                                             else "no")
    assert all(len(a.split()) == 1 for a in qa.values())


def test_text_corpus_holds_every_text():
  corpus = set(digits.text_corpus())
  for d in range(10):
    assert set(digits.captions(d)) <= corpus
    for q, a in digits.qa_pairs(d):
      assert q in corpus and a in corpus
