"""``bench ssd``: fwd+bwd time of the SSD implementations against a naive softmax attention with
the same heads, per sequence length, optionally beside mamba_ssm's minimal SSD (``--peer``,
see ``peer``); a markdown table with the ratios to ``xla`` and the growth with length."""
from __future__ import annotations

from absl import app, flags
import jax
import jax.numpy as jnp

from experiments.benchmarks import peer as peer_lib
from experiments.benchmarks.common import machine, print_markdown, time_fn, write_json
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
flags.DEFINE_bool("peer", False, "ssd: also time mamba_ssm's ssd_minimal_discrete (PyTorch CPU, "
                  "fwd+bwd, best of --peer_chunks); needs torch and einops.")
flags.DEFINE_string("peer_file", None, "ssd --peer: path of mamba_ssm/modules/ssd_minimal.py; "
                    "without it the file is read from the mamba-ssm sdist that pip downloads.")
flags.DEFINE_list("peer_chunks", ["64", "128", "256"], "ssd --peer: the peer's chunk sizes "
                  "(its best is reported).")


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
  if FLAGS.peer:
    peer_lib.check_peer_deps()  # before downloading anything
  peer = peer_lib.load_peer(peer_lib.peer_source(FLAGS.peer_file)) if FLAGS.peer else None
  if peer and FLAGS.dtype != "float32":
    raise app.UsageError("--peer runs in float32 only; drop --dtype or use --dtype=float32")
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
    if peer:
      peer_times = {}
      for chunk in map(int, FLAGS.peer_chunks):
        if length % chunk == 0:  # the peer needs whole chunks
          peer_times[chunk] = peer_lib.time_peer(peer, x, dt, A, B, C, chunk,
                                                 warmup=FLAGS.warmup, repeats=FLAGS.repeats)
      best = min(peer_times, key=peer_times.get) if peer_times else None
      row["peer"] = peer_times[best] if peer_times else None
      row["peer_chunk"] = best
    print(f"  L={length}: " + ", ".join(
          f"{k}={v * 1e3:.1f}ms" if v else f"{k}=skipped" for k, v in row.items()
          if k not in ("length", "peer_chunk")), flush=True)
    rows.append(row)
  print_table(rows)
  write_json(FLAGS.out, flags=flag_values(), rows=rows)


def flag_values() -> dict:
  return {k: getattr(FLAGS, k) for k in ("batch", "heads", "headdim", "state", "groups",
                                         "dtype", "chunk_sizes")}


def print_table(rows):
  """The SSD table of ``rows`` ({"length", <impl>: seconds or None, ...}): ms per
  implementation, each one's ratio to ``xla``, and each one's growth with length."""
  names = [k for k in rows[0] if k not in ("length", "peer_chunk")]
  print(f"\nSSD fwd+bwd, median ms; {machine()}; {flag_values()}")
  if "peer" in names:
    import torch  # pylint: disable=g-import-not-at-top
    print(f"peer: mamba_ssm ssd_minimal_discrete, torch {torch.__version__} CPU "
          f"({torch.get_num_threads()} threads), float32, best of chunks "
          f"{','.join(FLAGS.peer_chunks)} (chunk per length: "
          + ", ".join(f"{r['length']}: {r['peer_chunk']}" for r in rows) + ")")
  header = ["length"] + [f"{k} (ms)" for k in names]
  ratio_cols = [k for k in names if k != "xla"] if "xla" in names else []
  header += [f"{k} / xla" for k in ratio_cols]   # with xla alone there is nothing to compare
  fmt = lambda v: "skipped (memory)" if v is None else f"{v * 1e3:.1f}"
  table = []
  for row in rows:
    cells = [str(row["length"])] + [fmt(row[k]) for k in names]
    for k in ratio_cols:
      cells.append("-" if row[k] is None or row["xla"] is None else f"{row[k] / row['xla']:.2f}x")
    table.append(cells)
  print_markdown(header, table)
  for k in names:  # growth from the shortest to each longer length (linear: the length ratio)
    base = rows[0]
    for row in rows[1:]:
      if row[k] and base[k]:
        print(f"{k}: {row['length']} / {base['length']} tokens = "
              f"{row[k] / base[k]:.1f}x the time (linear: {row['length'] / base['length']:.0f}x)")
