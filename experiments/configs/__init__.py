"""Named configs: small Python files returning an ml_collections.ConfigDict (big_vision style).

``--config`` takes a registered name (the files in this folder) or a path to a config file;
``--config.a.b=value`` overrides one field (ml_collections config_flags).
"""
from __future__ import annotations

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = tuple(sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                     if f.endswith(".py") and not f.startswith("_")))


def resolve(name_or_path: str) -> str:
  """A registered name or a file path (optionally ``path:arg``) -> a config file path."""
  if name_or_path in NAMES:
    return os.path.join(CONFIG_DIR, name_or_path + ".py")
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


def rewrite_argv(argv: list[str]) -> list[str]:
  """Turns ``--config=NAME`` into ``--config=PATH`` before absl parses flags."""
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      arg = "--config=" + resolve(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(argv):
      argv[i + 1] = resolve(argv[i + 1])
    out.append(arg)
  return out
