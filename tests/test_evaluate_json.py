"""eval.json after an evaluation of some tasks: merged with the same checkpoint's earlier scores."""
from __future__ import annotations

from experiments.evaluate import merged_results


def test_a_partial_evaluation_keeps_the_other_tasks_scores():
  before = {"step": 1800, "config": "digits", "class_accuracy": 0.99, "vqa_accuracy": 0.70}
  vqa_only = {"step": 1800, "config": "digits", "vqa_accuracy": 0.93}
  assert merged_results(before, vqa_only) == {"step": 1800, "config": "digits",
                                              "class_accuracy": 0.99, "vqa_accuracy": 0.93}
  assert before["vqa_accuracy"] == 0.70   # the inputs are left as they were


def test_scores_of_another_checkpoint_are_dropped():
  before = {"step": 1200, "config": "digits", "class_accuracy": 0.99}
  after = {"step": 1800, "config": "digits", "vqa_accuracy": 0.93}
  assert merged_results(before, after) == after
  assert merged_results({**after, "config": "cifar10"}, {**after, "fid": 3.0}) == {
      **after, "fid": 3.0}
  assert merged_results(None, after) == after


def test_scores_from_another_sample_size_are_dropped():
  before = {"step": 1800, "config": "digits", "per_class": 30, "class_accuracy": 0.99}
  after = {"step": 1800, "config": "digits", "per_class": 2, "vqa_accuracy": 0.93}
  assert merged_results(before, after) == after
