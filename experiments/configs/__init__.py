"""Named configs: small Python files returning an ml_collections.ConfigDict (big_vision style).

``--config`` takes a registered name (the files in this folder but ``base``, the defaults every
run derives from) or a path to a config file; ``--config.a.b=value`` overrides one field
(ml_collections config_flags).
"""
from __future__ import annotations

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
  """The ConfigDict of a registered name or a config file (for tests and notebooks)."""
  import importlib.util
  path = resolve(name_or_path)
  spec = importlib.util.spec_from_file_location("_mdm_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


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
  if any(a.startswith("--config.") for a in out):
    check_override_fields(load(chosen), out, f"config {chosen!r}")
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
