"""What every benchmark shares: the timing flags, the median of timed runs, the machine line
printed under each table, and the markdown table and JSON writers."""
from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Callable, Sequence

from absl import flags
import jax

from experiments import allocator

FLAGS = flags.FLAGS
flags.DEFINE_integer("warmup", 1, "Untimed runs after compilation.")
flags.DEFINE_integer("repeats", 3, "Timed runs (median reported).")
flags.DEFINE_float("max_gib", 12.0, "Skip a case whose estimated working set exceeds this.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")


def time_fn(fn: Callable, *args, warmup: int, repeats: int) -> float:
  """Median wall time in seconds of ``fn(*args)`` after compilation and warm-up."""
  jax.block_until_ready(fn(*args))
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def undonated_train_step(config):
  """(trainer, ``state -> state`` jitted without donation, a fresh state) for ``config`` on a
  dummy batch: a step that ``time_fn`` can call again and again with the same state."""
  from mdm_jax.training import sharding  # pylint: disable=g-import-not-at-top
  from mdm_jax.training.trainer import Trainer  # pylint: disable=g-import-not-at-top
  tr = Trainer(config, sharding.make_mesh(), vocab_size=256, num_classes=10)
  batch = tr.dummy_batch(config.batch_size)
  return tr, jax.jit(lambda s: tr.update(s, batch)[0]), tr.init_state()


def machine() -> str:
  dev = jax.devices()[0]
  return (f"{dev.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s), "
          f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
          f"malloc: {allocator.in_use()}")


def print_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
  """A markdown table: the header, its rule, one line per row of cells."""
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for cells in rows:
    print("| " + " | ".join(cells) + " |")


def write_json(path, **results) -> None:
  """``{"machine": machine(), **results}`` to ``path`` (the --out of a bench), when given."""
  if path:
    with open(path, "w") as f:
      json.dump({"machine": machine(), **results}, f, indent=1)
