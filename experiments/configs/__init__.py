"""Named configs: small Python files returning an ml_collections.ConfigDict (big_vision style).

``--config`` takes a registered name (the files in this folder but ``base``, the defaults every
run derives from) or a path to a config file; ``--config.a.b=value`` overrides one field
(ml_collections config_flags). A config file may set only fields the base config has (a typo
such as ``c.optim.learning_rate`` would otherwise add a field nothing reads), and its
``get_config`` must return a ConfigDict.
"""
from __future__ import annotations

import difflib
import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
BASE = "base"   # shared defaults, not a run
NAMES = tuple(sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                     if f.endswith(".py") and not f.startswith("_") and f[:-3] != BASE))


def resolve(name_or_path: str) -> str:
  """A registered name or a file path (optionally ``path:arg``) -> a config file path."""
  if name_or_path in NAMES:
    return os.path.join(CONFIG_DIR, name_or_path + ".py")
  if name_or_path == BASE:
    raise ValueError(f"config {BASE!r} holds the defaults every run derives from, it is not a "
                     f"run: choose one of {', '.join(NAMES)}")
  path = name_or_path.split(":", 1)[0]
  if path.endswith(".py") and os.path.exists(path):
    return name_or_path
  raise ValueError(f"unknown config {name_or_path!r}: not a registered name and not an existing"
                   f" .py file. Known configs: {', '.join(NAMES)}")


def load(name_or_path: str):
  """The ConfigDict of a registered name or a config file (``path:arg`` calls
  ``get_config(arg)``, as config_flags does). Raises a ValueError naming the file when
  ``get_config`` is missing or returns something other than a ConfigDict."""
  import importlib.util
  import ml_collections
  path, *arg = resolve(name_or_path).split(":", 1)
  spec = importlib.util.spec_from_file_location("_mdm_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"config file {path} has no get_config() function: define one returning "
                     "an ml_collections.ConfigDict")
  config = module.get_config(*arg)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(
        f"get_config() in {path} returned a {type(config).__name__}, not an "
        "ml_collections.ConfigDict: build the config from a registered one (e.g. `from "
        "experiments.configs import digits` and `c = digits.get_config()`), or return "
        "ml_collections.ConfigDict(...)")
  return config


def _leaf_paths(config) -> list[str]:
  """Dotted paths of every field of a ConfigDict (sections recursed into)."""
  from mdm_jax.training import config_drift  # pylint: disable=g-import-not-at-top
  return list(config_drift.flat_fields(config))


def nearest_fields(path: str, known: list[str]) -> list[str]:
  """The known dotted paths most like ``path``: the same name in another section
  (``lr`` -> ``optim.lr``), a name of its section spelled by its initials
  (``learning_rate`` -> ``lr``), then the closest spellings (difflib)."""
  section, _, leaf = path.rpartition(".")
  split = lambda k: k.rpartition(".")[::2]   # (section, leaf)
  siblings = [k for k in known if split(k)[0] == section]
  initials = "".join(w[:1] for w in leaf.split("_"))
  found = [k for k in known if split(k)[1] == leaf]
  found += [k for k in siblings if split(k)[1] == initials and "_" in leaf]
  found += difflib.get_close_matches(path, siblings, n=2, cutoff=0.6)
  found += difflib.get_close_matches(path, known, n=2, cutoff=0.0)
  return list(dict.fromkeys(found))[:2]


def check_config_fields(config, name: str = "the config") -> None:
  """Raises a ValueError naming every field of ``config`` that the base config does not have
  (a typo in a config file: ml_collections would add it, and nothing would read it), with the
  nearest known field of each."""
  from experiments.configs import base  # pylint: disable=g-import-not-at-top
  known = _leaf_paths(base.get_config())
  known_set, sections = set(known), {k.rsplit(".", 1)[0] for k in known if "." in k}
  unknown = [p for p in _leaf_paths(config) if p not in known_set and p not in sections]
  if unknown:
    def explain(path):
      section = path.rpartition(".")[0]
      there = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section)
      return (f"{path!r} (did you mean {' or '.join(map(repr, nearest_fields(path, known)))}? "
              f"{section or 'the top level'} has {', '.join(there)})")
    raise ValueError(f"{name} sets fields no run reads: {'; '.join(map(explain, unknown))}. "
                     "Rename them to the base config's fields (experiments/configs/base.py).")


def check_override_fields(config, argv: list[str], name: str = "the config") -> None:
  """Raises a ValueError naming the field and the fields that exist, for every
  ``--config.a.b=value`` in argv whose path is not in ``config`` (ml_collections would fail
  later with a bare ``AttributeError: 'b'``)."""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, walked = config, []
    for key in path.split("."):
      if not hasattr(node, "keys") or key not in node:
        where = ".".join(walked) or "the top level"
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
        from mdm_jax.training.trainer import DATA_FIELDS  # pylint: disable=g-import-not-at-top
        hint = (f" (the model reads it from the data section: use --config.data.{key})"
                if walked == ["model"] and key in DATA_FIELDS else "")
        raise ValueError(
            f"unknown config field {path!r} (from {arg}): {name} has no {key!r} in {where}"
            f"{hint}. Fields there: {known}")
      node, walked = node[key], walked + [key]


def rewrite_argv(argv: list[str]) -> list[str]:
  """Turns ``--config=NAME`` into ``--config=PATH`` before absl parses flags, and checks that
  every ``--config.a.b=...`` override names a field of that config (default: digits)."""
  out, chosen = [], "digits"
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      chosen = arg.split("=", 1)[1]
      arg = "--config=" + resolve(chosen)
    elif arg == "--config" and i + 1 < len(argv):
      chosen = argv[i + 1]
      argv[i + 1] = resolve(chosen)
    out.append(arg)
  config = load(chosen)
  check_config_fields(config, f"config {chosen!r}")
  if any(a.startswith("--config.") for a in out):
    check_override_fields(config, out, f"config {chosen!r}")
  return out


def check_run_values(config) -> None:
  """Raises a ValueError naming the field and the fix for run values that would fail only
  after compiling (a zero interval divides by zero, a zero batch has no examples)."""
  at_least_one = ("total_steps", "batch_size", "log_every", "checkpoint_every")
  problems = [f"{k}={config[k]!r} (must be an integer >= 1)" for k in at_least_one
              if not isinstance(config[k], int) or config[k] < 1]
  if not isinstance(config.optim.warmup_steps, int) or config.optim.warmup_steps < 0:
    problems.append(f"optim.warmup_steps={config.optim.warmup_steps!r} (an integer >= 0)")
  if not isinstance(config.optim.lr, (int, float)) or config.optim.lr <= 0:
    problems.append(f"optim.lr={config.optim.lr!r} (a number > 0)")
  if not isinstance(config.sample_every, int) or config.sample_every < 0:
    problems.append(f"sample_every={config.sample_every!r} (>= 1, or 0 for no periodic samples)")
  if not config.data.name:
    problems.append(f"data.name={config.data.name!r} (the dataset to train on)")
  if config.sample.num < 1:
    problems.append(f"sample.num={config.sample.num!r} (must be >= 1)")
  if problems:
    raise ValueError("Invalid run config: " + "; ".join(problems) +
                     ". Fix them with --config.FIELD=VALUE.")
