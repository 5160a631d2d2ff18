"""Parameter counts from abstract shapes (``jax.eval_shape``: nothing is allocated)."""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax


def count_params(init_fn: Callable[..., Any], *args, depth: int = 2) -> dict[str, int]:
  """Counts the ``params`` collection of ``init_fn(*args)`` by module path.

  Args:
    init_fn: e.g. ``model.init``; called abstractly with ``args`` (arrays or ShapeDtypeStructs).
    depth: how many path components name a row (``vae/encoder`` at depth 2).
  Returns:
    {module path: count}, with "total" last.
  """
  variables = jax.eval_shape(init_fn, *args)
  params = nn.meta.unbox(variables["params"])
  counts: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = "/".join(str(getattr(k, "key", k)) for k in path[:depth])
    counts[key] = counts.get(key, 0) + math.prod(leaf.shape)
  counts["total"] = sum(counts.values())
  return counts


def format_counts(counts: dict[str, int]) -> str:
  """A two-column table of ``count_params`` output."""
  width = max(len(k) for k in counts)
  rows = [f"{k:<{width}}  {v:>15,}  ({v / 1e6:,.2f}M)" for k, v in counts.items()]
  return "\n".join(rows)
