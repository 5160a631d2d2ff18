"""VQAv2 accuracy on worked examples, and the SEDD-bound perplexity helper."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mdm_jax.evaluation import perplexity
from mdm_jax.evaluation import vqa


def _answers(num_match, match="2", other="3", total=10):
  return [match] * num_match + [other] * (total - num_match)


def test_accuracy_by_question_groups_each_question():
  # "even?" right 2 of 3 (one "No." normalises to "no"), "which digit?" right 0 of 1.
  got = vqa.accuracy_by_question(
      ["yes", "No.", "yes", "three"], [["yes"], ["no"], ["no"], ["2"]],
      ["even?", "even?", "even?", "which digit?"])
  assert list(got) == ["even?", "which digit?"]
  assert got["even?"] == pytest.approx(2 / 3) and got["which digit?"] == 0.0
  with pytest.raises(ValueError, match="one question per prediction"):
    vqa.accuracy_by_question(["yes"], [["yes"]], [])


@pytest.mark.parametrize(
    "num_match, expected",
    [
        # Leave-one-out over 10 annotators: dropping one of m matches leaves m - 1 (m of 10
        # subsets), dropping a non-match leaves m (10 - m subsets); each scores min(1, . / 3).
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        (4, 1.0),
        (10, 1.0),
    ])
def test_leave_one_out_accuracy(num_match, expected):
  assert vqa.vqa_accuracy("2", _answers(num_match)) == pytest.approx(expected, abs=1e-12)


def test_one_of_ten_is_point_three():
  assert vqa.vqa_accuracy("dog", ["dog"] + ["cat"] * 9) == pytest.approx(0.3)


def test_fewer_annotators():
  # 3 annotators, 2 agree: subsets {match, other} 1/3 (twice), {match, match} 2/3 -> 4/9.
  assert vqa.vqa_accuracy("yes", ["yes", "yes", "no"]) == pytest.approx(4 / 9)
  # A single annotator: exact match of normalised answers.
  assert vqa.vqa_accuracy("Two", ["2"]) == 1.0
  assert vqa.vqa_accuracy("3", ["2"]) == 0.0


@pytest.mark.parametrize("raw, normalised", [
    ("Two", "2"),
    ("a dog.", "dog"),
    ("The  Dog!", "dog"),
    ("none", "0"),
    ("1,000", "1000"),
    ("2.5", "2.5"),
    ("dont", "don't"),
    ("black/white", "black white"),
    ("yes\n", "yes"),
])
def test_normalisation(raw, normalised):
  assert vqa.normalize_answer(raw) == normalised


def test_normalised_matches_count():
  assert vqa.vqa_accuracy("Two", ["2"] * 10) == 1.0
  assert vqa.vqa_accuracy("a dog.", ["dog"] * 10) == 1.0
  assert vqa.vqa_accuracy("2", ["Two"] * 10) == 1.0
  # vqaEval.py leaves unanimous human answers untouched, so raw "Two" never matches "2".
  assert vqa.vqa_accuracy("2", ["Two"] * 10, official_gt_processing=True) == 0.0
  assert vqa.mean_vqa_accuracy(["2", "cat"], [_answers(1), ["cat"] * 10]) == pytest.approx(0.65)


def test_vqa_rejects_bare_string_answers():
  with pytest.raises(ValueError, match="list of strings"):
    vqa.vqa_accuracy("2", "2")


def test_perplexity_from_elbo():
  # A bound of log 4 nats per token -> perplexity 4.
  assert perplexity.perplexity_from_elbo(10 * math.log(4), 10) == pytest.approx(4.0)
  # Per-sequence values and counts are summed: (log 2 * 3 + log 8 * 1) / 4 tokens.
  got = perplexity.perplexity_from_elbo(np.array([3 * math.log(2), math.log(8)]), [3, 1])
  assert got == pytest.approx(math.exp((3 * math.log(2) + math.log(8)) / 4))
  with pytest.raises(ValueError, match="positive"):
    perplexity.perplexity_from_elbo(1.0, 0)


def test_sedd_nll_bound_averages_t_draws_and_sums_tokens():
  losses = np.array([[[1.0, 2.0, 5.0]], [[3.0, 4.0, 7.0]]])  # K=2 draws, b=1, l=3
  np.testing.assert_allclose(perplexity.sedd_nll_bound(losses), [2.0 + 3.0 + 6.0])
  mask = np.array([[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(perplexity.sedd_nll_bound(losses, mask), [5.0])
  with pytest.raises(ValueError, match="num_t_samples"):
    perplexity.sedd_nll_bound(losses[0])
