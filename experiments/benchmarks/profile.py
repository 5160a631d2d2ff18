"""``bench profile``: where a config's train step spends its time, op kind by op kind.

Traces ``--profile_steps`` train steps with ``jax.profiler`` (the trace is kept in
``--trace_dir`` for TensorBoard or Perfetto), then sums the compiled program's ops by kind: an
XLA op's name without its number (``copy_bitcast_fusion.34`` -> ``copy_bitcast_fusion``; on
CPU ``ynn_fusion`` are the matmuls and what XLA fused into them). Beside the table: the step's
wall time and XLA's cost analysis (FLOPs and bytes accessed), which tell a step bound by its
arithmetic from one bound by moving data; XLA counts a rolled loop's body once, so with a
scanned layer stack the counts are the whole step's only with ``model.scan_unroll`` at
``n_layers``. On 2 cores XLA runs independent ops side by side, so
the op times can add up to more than the step.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Iterable

from absl import flags
import jax

from experiments.benchmarks.common import (machine, print_markdown, time_fn,
                                           undonated_train_step, write_json)

FLAGS = flags.FLAGS
flags.DEFINE_string("profile_config", "digits", "profile: the named config (or config file).")
flags.DEFINE_integer("profile_steps", 3, "profile: train steps traced.")
flags.DEFINE_integer("profile_top", 15, "profile: op kinds listed (the rest summed in one row).")
flags.DEFINE_string("trace_dir", None, "profile: where the trace is written (default: a new "
                    "temporary folder, printed).")

# Trace events that are not one op of the compiled program: Python frames ($...), the runtime's
# executors and the control flow whose body's ops are listed themselves.
_NOT_AN_OP = re.compile(r"^(\$|ThunkExecutor|PjitFunction|CommonPjRt|while|conditional|call\b)")


def op_time_by_kind(events: Iterable[dict], steps: int) -> list[tuple[str, float, float]]:
  """Complete trace events (Chrome trace format: ``ph`` "X", ``name``, ``dur`` in us) ->
  [(op kind, ms per step, ops per step)], the most time first."""
  ms, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or _NOT_AN_OP.match(e.get("name", "")):
      continue
    kind = re.sub(r"\.\d+$", "", e["name"])
    ms[kind] += e.get("dur", 0) / 1e3 / steps
    count[kind] += 1 / steps
  return [(kind, t, count[kind]) for kind, t in ms.most_common()]


def _trace_events(trace_dir: str) -> list[dict]:
  found = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not found:
    raise FileNotFoundError(f"jax.profiler wrote no .trace.json.gz under {trace_dir}")
  with gzip.open(max(found, key=os.path.getmtime)) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def bench_profile():
  """The named config's train step: wall time, XLA's cost analysis and the traced op kinds."""
  from experiments import configs
  c = configs.load(FLAGS.profile_config)
  tr, step, state = undonated_train_step(c)
  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="mdm_profile_")
  n = FLAGS.profile_steps
  with tr.mesh_context():
    compiled = step.lower(state).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    step_ms = time_fn(compiled, state, warmup=FLAGS.warmup, repeats=FLAGS.repeats) * 1e3
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(n):
        jax.block_until_ready(compiled(state))
  kinds = op_time_by_kind(_trace_events(trace_dir), n)
  total = sum(t for _, t, _ in kinds)
  top, rest = kinds[:FLAGS.profile_top], kinds[FLAGS.profile_top:]
  rows = [[k, f"{t:.1f}", f"{t / total:.0%}", f"{cnt:.0f}"] for k, t, cnt in top]
  if rest:
    rest_ms = sum(t for _, t, _ in rest)
    rows.append([f"{len(rest)} other kinds", f"{rest_ms:.1f}", f"{rest_ms / total:.0%}",
                 f"{sum(cnt for _, _, cnt in rest):.0f}"])
  flops, nbytes = cost.get("flops", 0.0), cost.get("bytes accessed", 0.0)
  print(f"\n{FLAGS.profile_config} train step (batch {c.batch_size}): {step_ms:.0f} ms "
        f"(median of {FLAGS.repeats}); XLA's cost analysis: {flops / 1e9:.2f} GFLOP, "
        f"{nbytes / 1e9:.2f} GB accessed ({flops / step_ms / 1e6:.1f} GFLOP/s, "
        f"{nbytes / step_ms / 1e6:.1f} GB/s); ops traced over {n} steps: {total:.0f} ms and "
        f"{sum(cnt for _, _, cnt in kinds):.0f} ops per step; {machine()}")
  print_markdown(["op kind", "ms per step", "share", "ops per step"], rows)
  print(f"\ntrace: {trace_dir} (tensorboard --logdir, or ui.perfetto.dev)")
  write_json(FLAGS.out, config=FLAGS.profile_config, step_ms=step_ms, flops=flops,
             bytes_accessed=nbytes, op_kinds=[dict(kind=k, ms=t, ops=cnt)
                                              for k, t, cnt in kinds])
