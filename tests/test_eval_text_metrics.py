"""BLEU-4 and CIDEr-D on worked examples whose n-gram counts and tf-idf are derived by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mdm_jax.evaluation import text_metrics


def test_tokenize_lowercases_and_strips_punctuation():
  assert text_metrics.tokenize_caption("A Dog, running!  In the park.") == [
      "a", "dog", "running", "in", "the", "park"]


def test_bleu4_worked_example():
  candidates = ["the cat sat on the mat", "A dog runs in the park."]
  references = [["the cat is on the mat", "there is a cat on the mat"],
                ["a dog runs in a park", "the dog is running in the park"]]
  # Candidate 1 (6 words). 1-grams: the x2 (ref 1 has 2), cat, on, mat match, sat doesn't: 5/6.
  #   2-grams the cat, on the, the mat match; cat sat, sat on don't: 3/5.
  #   3-grams: only "on the mat": 1/4.  4-grams: none of 3.
  # Candidate 2 (6 words). 1-grams all 6 match; 2-grams a dog, dog runs, runs in (ref 1),
  #   in the, the park (ref 2): 5/5.  3-grams a dog runs, dog runs in, in the park: 3/4.
  #   4-grams: only "a dog runs in": 1/3.
  p = [(5 + 6) / (6 + 6), (3 + 5) / (5 + 5), (1 + 3) / (4 + 4), (0 + 1) / (3 + 3)]
  # Closest reference lengths: 6 (vs 7) for both -> r = 12 = c, no brevity penalty.
  expected = math.exp(sum(math.log(x) for x in p) / 4)
  assert text_metrics.corpus_bleu(candidates, references) == pytest.approx(expected, rel=1e-12)
  # Candidate 1 alone has no matching 4-gram: BLEU-4 is 0, BLEU-3 is not.
  assert text_metrics.corpus_bleu(candidates[:1], references[:1]) == 0.0
  assert text_metrics.corpus_bleu(candidates[:1], references[:1], max_n=3) == pytest.approx(
      (5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), rel=1e-12)


def test_bleu_brevity_penalty_and_closest_length_ties():
  # c = 2, r = 6: BP = exp(1 - 6/2); both precisions are 1.
  got = text_metrics.corpus_bleu(["the cat"], [["the cat sat on the mat"]], max_n=2)
  assert got == pytest.approx(math.exp(-2.0), rel=1e-12)
  # Candidate of 5 words, references of 4 and 6: the tie goes to the shorter (4) -> c > r, BP 1.
  cand = "a b c d e"
  refs = [["a b c d", "a b c d e f"]]
  assert text_metrics.corpus_bleu([cand], refs, max_n=1) == pytest.approx(1.0)
  assert text_metrics.corpus_bleu([cand], [["a b c d e f"]], max_n=1) == pytest.approx(
      math.exp(1 - 6 / 5))


def test_cider_d_unigram_worked_example():
  # Two images -> idf = log 2 - log df. "a" is in both images' references: idf 0.
  # "cat", "dog", "bird" have df 1 and unseen words ("the", "small") df 0 -> max(1, 0): idf log 2.
  references = [["a cat", "a dog"], ["a bird"]]
  candidates = ["the cat", "a small bird"]
  l2 = math.log(2)
  # Image 1: hyp {the: l2, cat: l2}, |hyp| = l2 sqrt 2.  Ref "a cat" {a: 0, cat: l2}, |ref| = l2:
  #   cos = l2 * l2 / (l2 sqrt2 * l2) = 1/sqrt2, equal lengths.  Ref "a dog": no overlap, 0.
  score1 = 10 * (1 / math.sqrt(2) + 0.0) / 2
  # Image 2: hyp {a: 0, small: l2, bird: l2}; ref {a: 0, bird: l2}: cos 1/sqrt2, lengths 3 vs 2.
  score2 = 10 * math.exp(-1 / (2 * 6.0 ** 2)) / math.sqrt(2)
  mean, per_image = text_metrics.cider_d(candidates, references, n=1)
  np.testing.assert_allclose(per_image, [score1, score2], rtol=1e-12)
  assert mean == pytest.approx((score1 + score2) / 2, rel=1e-12)


def test_cider_d_clips_candidate_counts():
  references = [["a cat"], ["a bird"]]
  # hyp {cat: 2 l2}, ref {a: 0, cat: l2}: clipped dot min(2 l2, l2) * l2 = l2^2,
  # cos = l2^2 / (2 l2 * l2) = 1/2 (1 without clipping).
  _, per_image = text_metrics.cider_d(["cat cat", "a bird"], references, n=1)
  assert per_image[0] == pytest.approx(10 * 0.5, rel=1e-12)
  assert per_image[1] == pytest.approx(10.0, rel=1e-12)


def test_cider_d_identical_candidate_scale():
  # Captions sharing no n-gram across images: every n-gram has df 1, idf log 2 > 0, and a
  # candidate equal to its references has cosine 1 at every order n = 1..4 -> 10.
  references = [["red apples on a table", "red apples on a table"],
                ["one small boat sails by"]]
  candidates = ["red apples on a table", "one small boat sails by"]
  mean, per_image = text_metrics.cider_d(candidates, references)
  np.testing.assert_allclose(per_image, [10.0, 10.0], rtol=1e-12)
  assert mean == pytest.approx(10.0)
  # One image only: idf = log 1 - log 1 = 0 for every reference n-gram, so the score is 0.
  assert text_metrics.cider_d(candidates[:1], references[:1])[0] == 0.0
  # A 3-word caption has no 4-grams: that order contributes 0 -> 10 * 3/4.
  _, short = text_metrics.cider_d(["big red boat", "x y z w"], [["big red boat"], ["q r s t"]])
  assert short[0] == pytest.approx(7.5, rel=1e-12)


def test_text_metrics_reject_malformed_input():
  with pytest.raises(ValueError, match="one reference list per candidate"):
    text_metrics.corpus_bleu(["a"], [["a"], ["b"]])
  with pytest.raises(ValueError, match="non-empty list"):
    text_metrics.cider_d(["a"], ["a"])
