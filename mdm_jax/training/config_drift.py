"""Config drift on resume: what differs between the config a checkpoint was saved with and the
config resuming it, and whether each difference changes what the run means.

``RULES`` is the one table of that decision; the first pattern matching a field's dotted path
(``fnmatch``) decides:

  SETTING  passes with a logged line (logging, checkpointing, sampling, the device layout,
           the length of the run, kernels that compute the same function);
  MEANING  refused unless the resume explicitly allows it (``experiments.train
           --allow_config_change``): the network, the objective, the optimizer, the data;
  REFUSED  refused even then: ``batch_size``, because the data iterator's saved position
           counts batches, so resuming with another batch size would silently repeat or skip
           examples.

A field the table does not name counts as MEANING. Values compare after JSON's round trip
(tuples and lists alike), so a saved config and a live ConfigDict compare field by field.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import shlex
from collections.abc import Mapping
from typing import Any

SETTING, MEANING, REFUSED = "setting", "meaning", "refused"

RULES: tuple[tuple[str, str, str], ...] = (
    # (field pattern, kind, what the field is / what a change does)
    ("batch_size", REFUSED, "the data position is saved in batches of the saved size: another "
     "batch size would repeat or skip examples"),
    ("total_steps", SETTING, "the run's length; the learning-rate schedule decays over the new "
     "total from here on"),
    ("log_every", SETTING, "logging"),
    ("sample_every", SETTING, "periodic samples"),
    ("checkpoint_every", SETTING, "checkpointing"),
    ("keep_checkpoints", SETTING, "checkpointing"),
    ("sample.*", SETTING, "sampling (samples only, not training)"),
    ("mesh.*", SETTING, "the device layout (the same numbers up to float rounding)"),
    ("sharding.*", SETTING, "the device layout (the same numbers up to float rounding)"),
    ("model.ssd_impl", SETTING, "the SSD implementation (the same function)"),
    ("model.pallas_target", SETTING, "the SSD kernel's target (the same function)"),
    ("model.remat", SETTING, "recomputation in the backward pass (memory, not numbers)"),
    ("model.*", MEANING, "the network"),
    ("data.data_dir", SETTING, "where the data is read from"),
    ("data.worker_count", MEANING, "grain saves the data position per worker process: another "
     "count may not restore it"),
    ("data.*", MEANING, "the training data"),
    ("seed", MEANING, "the data order: the rest of the epoch would repeat some examples and "
     "skip others"),
    ("loss.*", MEANING, "the training objective"),
    ("optim.*", MEANING, "the optimizer"),
    ("*", MEANING, "a field the drift table does not classify"),
)


class _Absent:
  def __repr__(self):
    return "(absent)"


ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class Change:
  path: str          # dotted field path, e.g. "model.directions"
  saved: Any         # the checkpoint's value (ABSENT when it had no such field)
  now: Any           # the resuming config's value (ABSENT when it has no such field)
  kind: str          # SETTING, MEANING or REFUSED
  why: str

  def __str__(self) -> str:
    return f"{self.path}: {self.saved!r} -> {self.now!r} ({self.why})"


class ConfigDriftError(ValueError):
  """The resuming config differs from the checkpoint's in a field that changes the run."""


def classify(path: str) -> tuple[str, str]:
  """(kind, why) of the first ``RULES`` row whose pattern matches ``path``."""
  for pattern, kind, why in RULES:
    if fnmatch.fnmatchcase(path, pattern):
      return kind, why
  raise AssertionError("RULES ends with a catch-all row")


def _plain(value: Any) -> Any:
  """JSON's view of a value: sequences as tuples, mappings as dicts, recursively."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def flat_fields(config: Any) -> dict[str, Any]:
  """Every field of a nested config (ConfigDict or dict) by dotted path, e.g.
  ``{"optim.lr": 1e-3, ...}``, values as JSON sees them; sections are recursed into."""
  return _flat(_plain(config))


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def compare(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
  """Every field whose value differs between ``saved`` and ``current`` (nested mappings or
  ConfigDicts), sorted by path, each classified by ``RULES``."""
  old, new = flat_fields(saved), flat_fields(current)
  changes = []
  for path in sorted(set(old) | set(new)):
    a, b = old.get(path, ABSENT), new.get(path, ABSENT)
    if a is ABSENT or b is ABSENT or a != b:
      changes.append(Change(path, a, b, *classify(path)))
  return changes


def _flag_value(value: Any) -> str:
  """``value`` as a shell word for ``--config.FIELD=``."""
  return shlex.quote(value if isinstance(value, str) else repr(value))


def check(saved: Mapping[str, Any], current: Mapping[str, Any], *, allow: bool,
          flag: str = "--allow_config_change", where: str = "the checkpoint") -> list[Change]:
  """Compares, and raises for changes the resume may not make.

  Args:
    saved: the config the checkpoint was saved with.
    current: the config resuming it.
    allow: MEANING changes are allowed (the user passed ``flag``).
    flag: the command-line switch named in the error.
    where: names the checkpoint in messages.

  Returns:
    Every change (for the caller to log); empty when the configs agree.

  Raises:
    ConfigDriftError: listing every change, when one is REFUSED, or MEANING without ``allow``.
  """
  changes = compare(saved, current)
  refused = [c for c in changes if c.kind == REFUSED]
  meaning = [c for c in changes if c.kind == MEANING]
  if refused or (meaning and not allow):
    blocking = refused + ([] if allow else meaning)
    lines = "\n".join(f"  {c}" for c in changes)
    back = " ".join(f"--config.{c.path}={_flag_value(c.saved)}" for c in blocking
                    if c.saved is not ABSENT)
    fix = []
    if meaning and not allow:
      fix.append(f"pass {flag} to resume with the changed "
                 f"{', '.join(c.path for c in meaning)} on purpose")
    if refused:
      fix.append(f"{', '.join(c.path for c in refused)} cannot change on resume, even with "
                 f"{flag}")
    raise ConfigDriftError(
        f"The config differs from the one {where} was trained with:\n{lines}\n"
        f"{'; '.join(fix)}. To resume as it trained, put the saved values back ({back}); to "
        "train the new config from scratch, use another --workdir.")
  return changes
