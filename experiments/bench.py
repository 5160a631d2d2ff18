r"""Benchmarks. Speed and memory are measured here, not in timed tests.

  python -m experiments.bench ssd [--impl=scan,xla,attention] [--lengths=1024,...,65536]
      fwd+bwd time of the SSD implementations against a naive softmax attention with the same
      heads, per sequence length; prints a markdown table (and ratios) and writes it as JSON to
      --out when given.

Each measurement compiles once, runs ``--warmup`` times, then reports the median of
``--repeats`` timed runs (``block_until_ready`` on every output).
"""
from __future__ import annotations

import functools
import json
import platform
import statistics
import time
from typing import Callable

from absl import app, flags
import jax
import jax.numpy as jnp

from mdm_jax.ssm.ssd import ssd

FLAGS = flags.FLAGS
flags.DEFINE_list("impl", ["scan", "xla", "attention"], "Implementations to time.")
flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768", "65536"],
                  "Sequence lengths.")
flags.DEFINE_integer("batch", 1, "Batch size.")
flags.DEFINE_integer("heads", 8, "Heads.")
flags.DEFINE_integer("headdim", 64, "Head dimension p.")
flags.DEFINE_integer("state", 64, "State size n.")
flags.DEFINE_integer("groups", 1, "B/C groups.")
flags.DEFINE_list("chunk_sizes", ["64"], "Chunk sizes to time for the chunked implementations.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Input dtype.")
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


def attention(x, B, C):
  """Naive causal softmax attention with the SSD's heads: q = C, k = B (per group), v = x."""
  h, g = x.shape[2], B.shape[2]
  q = jnp.repeat(C, h // g, axis=2)
  k = jnp.repeat(B, h // g, axis=2)
  scores = jnp.einsum("bthn,bshn->bhts", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  length = x.shape[1]
  mask = jnp.tril(jnp.ones((length, length), bool))
  scores = jnp.where(mask, scores.astype(jnp.float32), -jnp.inf)
  return jnp.einsum("bhts,bshp->bthp", jax.nn.softmax(scores, axis=-1).astype(x.dtype), x)


def estimated_gib(impl: str, length: int, chunk: int) -> float:
  """Rough fwd+bwd working set, to skip cases that cannot fit instead of crashing."""
  b, h, p, n = FLAGS.batch, FLAGS.heads, FLAGS.headdim, FLAGS.state
  if impl == "scan":   # the backward keeps one (h, p, n) state per token
    words = 2 * b * length * h * p * n
  elif impl == "attention":  # scores, probabilities and their cotangents, (h, L, L) each
    words = 4 * b * h * length * length
  else:   # per-chunk (q, q) decays and products, plus chunk states
    words = 6 * b * h * length * chunk + 3 * b * h * p * n * (length // chunk + 1)
  return 4 * words / 2**30


def make_fwd_bwd(impl: str, chunk: int):
  def loss(x, dt, A, B, C):
    if impl == "attention":
      y = attention(x, B, C)
    else:
      y, _ = ssd(x, dt, A, B, C, chunk_size=chunk, impl=impl)
    return jnp.sum(y.astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def bench_ssd():
  dtype = jnp.dtype(FLAGS.dtype)
  b, h, p, n, g = FLAGS.batch, FLAGS.heads, FLAGS.headdim, FLAGS.state, FLAGS.groups
  rows = []
  for length in map(int, FLAGS.lengths):
    ks = jax.random.split(jax.random.PRNGKey(length), 5)
    x = jax.random.normal(ks[0], (b, length, h, p), dtype)
    dt = jax.nn.softplus(jax.random.normal(ks[1], (b, length, h)) - 2).astype(dtype)
    A = -jnp.exp(jax.random.normal(ks[2], (h,)))
    B = jax.random.normal(ks[3], (b, length, g, n), dtype)
    C = jax.random.normal(ks[4], (b, length, g, n), dtype)
    row = {"length": length}
    for impl in FLAGS.impl:
      chunks = [int(c) for c in FLAGS.chunk_sizes] if impl in ("xla", "pallas") else [0]
      for chunk in chunks:
        name = impl if impl not in ("xla", "pallas") or len(chunks) == 1 else f"{impl}@{chunk}"
        if estimated_gib(impl, length, chunk or 64) > FLAGS.max_gib:
          row[name] = None
          continue
        fn = make_fwd_bwd(impl, chunk or 64)
        row[name] = time_fn(fn, x, dt, A, B, C, warmup=FLAGS.warmup, repeats=FLAGS.repeats)
      print(f"  L={length}: " + ", ".join(
          f"{k}={v * 1e3:.1f}ms" if v else f"{k}=skipped" for k, v in row.items()
          if k != "length"), flush=True)
    rows.append(row)
  print_table(rows)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"machine": machine(), "flags": flag_values(), "rows": rows}, f, indent=1)


def machine() -> str:
  dev = jax.devices()[0]
  return (f"{dev.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s), "
          f"jax {jax.__version__}, {platform.processor() or platform.machine()}")


def flag_values() -> dict:
  return {k: getattr(FLAGS, k) for k in ("batch", "heads", "headdim", "state", "groups",
                                         "dtype", "chunk_sizes")}


def print_table(rows):
  names = [k for k in rows[0] if k != "length"]
  print(f"\nSSD fwd+bwd, median ms; {machine()}; {flag_values()}")
  header = "| length | " + " | ".join(f"{k} (ms)" for k in names)
  ratio_cols = []
  if "xla" in names:
    ratio_cols = [k for k in names if k != "xla"]
    header += " | " + " | ".join(f"{k} / xla" for k in ratio_cols)
  print(header + " |")
  print("|" + "---|" * (1 + len(names) + len(ratio_cols)))
  fmt = lambda v: "skipped (memory)" if v is None else f"{v * 1e3:.1f}"
  for row in rows:
    cells = [str(row["length"])] + [fmt(row[k]) for k in names]
    for k in ratio_cols:
      cells.append("-" if row[k] is None or row["xla"] is None else f"{row[k] / row['xla']:.1f}x")
    print("| " + " | ".join(cells) + " |")


BENCHES = {"ssd": bench_ssd}


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHES:
    raise app.UsageError(f"usage: python -m experiments.bench {{{','.join(BENCHES)}}} [flags]")
  BENCHES[argv[1]]()


if __name__ == "__main__":
  app.run(main)
