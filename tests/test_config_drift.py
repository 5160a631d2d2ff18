"""The resume-time config comparison (mdm_jax.training.config_drift) on hand-built configs."""
from __future__ import annotations

import ml_collections
import pytest

from mdm_jax.training import config_drift as drift


def _saved():
  return {"batch_size": 16, "seed": 0, "total_steps": 6, "log_every": 2,
          "model": {"directions": 4, "d_model": 32, "ssd_impl": "auto", "remat": False},
          "loss": {"objective": "score_entropy", "task_weights": [0.5, 1.5, 1.0]},
          "optim": {"lr": 0.002}, "data": {"name": "digits", "data_dir": None},
          "sample": {"steps": 3}, "mesh": {"data": -1}}


def _now(**changes):
  c = ml_collections.ConfigDict(_saved())
  c.loss.task_weights = (0.5, 1.5, 1.0)           # a live config holds tuples
  for path, value in changes.items():
    *section, leaf = path.split(".")
    node = c
    for key in section:
      node = node[key]
    node[leaf] = value
  return c


def test_equal_configs_have_no_changes_whatever_the_sequence_type():
  assert drift.compare(_saved(), _now()) == []
  assert drift.check(_saved(), _now(), allow=False) == []


def test_every_difference_is_listed_with_its_kind():
  now = _now(**{"model.directions": 1, "sample.steps": 50, "total_steps": 12,
                "loss.task_weights": (1.0, 0.0, 0.0), "data.data_dir": "/new"})
  del now.model["remat"]
  now.optim.b1 = 0.8                                # a field the checkpoint predates
  got = {c.path: (c.saved, c.now, c.kind) for c in drift.compare(_saved(), now)}
  assert got == {
      "model.directions": (4, 1, drift.MEANING),
      "model.remat": (False, drift.ABSENT, drift.SETTING),
      "sample.steps": (3, 50, drift.SETTING),
      "total_steps": (6, 12, drift.SETTING),
      "loss.task_weights": ((0.5, 1.5, 1.0), (1.0, 0.0, 0.0), drift.MEANING),
      "data.data_dir": (None, "/new", drift.SETTING),
      "optim.b1": (drift.ABSENT, 0.8, drift.MEANING),
  }


@pytest.mark.parametrize("path,kind", [
    ("batch_size", drift.REFUSED), ("seed", drift.MEANING), ("log_every", drift.SETTING),
    ("model.d_model", drift.MEANING), ("model.ssd_impl", drift.SETTING),
    ("loss.objective", drift.MEANING), ("optim.lr", drift.MEANING),
    ("data.name", drift.MEANING), ("mesh.data", drift.SETTING),
    ("sharding.logical_axis_rules", drift.SETTING), ("a_new_top_level_field", drift.MEANING)])
def test_the_table_classifies(path, kind):
  assert drift.classify(path)[0] == kind


def test_settings_pass_meaning_needs_the_flag_batch_size_never():
  settings = _now(**{"sample.steps": 50, "log_every": 5, "model.ssd_impl": "xla"})
  assert [c.path for c in drift.check(_saved(), settings, allow=False)] == [
      "log_every", "model.ssd_impl", "sample.steps"]
  meaning = _now(**{"model.directions": 1, "sample.steps": 50})
  with pytest.raises(drift.ConfigDriftError) as e:
    drift.check(_saved(), meaning, allow=False, where="checkpoint 6")
  msg = str(e.value)
  assert "differs from the one checkpoint 6 was trained with" in msg
  assert "model.directions: 4 -> 1 (the network)" in msg
  assert "sample.steps: 3 -> 50 (sampling" in msg          # every difference is listed
  assert "pass --allow_config_change to resume with the changed model.directions" in msg
  assert "--config.model.directions=4" in msg and "--config.sample.steps" not in msg
  assert len(drift.check(_saved(), meaning, allow=True)) == 2
  batch = _now(batch_size=32, **{"loss.task_weights": (1.0, 0.0, 0.0)})
  for allow in (False, True):
    with pytest.raises(drift.ConfigDriftError,
                       match=r"(?s)batch_size: 16 -> 32 \(the data position is saved in batches"
                       r".*batch_size cannot change on resume, even with --allow_config_change"):
      drift.check(_saved(), batch, allow=allow)
  with pytest.raises(drift.ConfigDriftError,
                     match=r"--config.batch_size=16 --config.loss.task_weights='\(0.5, 1.5, "
                     r"1.0\)'"):
    drift.check(_saved(), batch, allow=False)
