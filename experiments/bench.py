r"""Benchmarks. Speed and memory are measured here, not in timed tests.

  python -m experiments.bench ssd [--impl=scan,xla,attention] [--lengths=1024,...,65536] [--peer]
      fwd+bwd time of the SSD implementations against a naive softmax attention with the same
      heads, per sequence length; prints a markdown table (and ratios) and writes it as JSON to
      --out when given. --peer adds mamba_ssm's minimal SSD reference under PyTorch CPU (needs
      torch and einops; see ``peer_ssd``).
  python -m experiments.bench model [--image_tokens=256,1024,4096,16384] [--max_gib=12]
      train-step time and compiled memory of MDM against the Transformer backbone at matched
      parameter counts; a step whose compiled memory exceeds --max_gib is reported, not run.
  python -m experiments.bench mfu
      the digits train step's achieved FLOP/s against a matmul peak measured in the same run.
  python -m experiments.bench sampler --workdir=DIR
      image sampler and steps against class accuracy and FID on a trained digits run.
  python -m experiments.bench data
      batches/s of the digits input pipeline.

Each measurement compiles once, runs ``--warmup`` times, then reports the median of
``--repeats`` timed runs (``block_until_ready`` on every output).
"""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from typing import Callable

from absl import app, flags
import jax
import jax.numpy as jnp

from experiments import allocator
from mdm_jax.ssm.ssd import ssd

FLAGS = flags.FLAGS
# ssd (and --warmup, --repeats, --max_gib, --out for every bench)
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
flags.DEFINE_bool("peer", False, "ssd: also time mamba_ssm's ssd_minimal_discrete (PyTorch CPU, "
                  "fwd+bwd, best of --peer_chunks); needs torch and einops.")
flags.DEFINE_string("peer_file", None, "ssd --peer: path of mamba_ssm/modules/ssd_minimal.py; "
                    "without it the file is read from the mamba-ssm sdist that pip downloads.")
flags.DEFINE_list("peer_chunks", ["64", "128", "256"], "ssd --peer: the peer's chunk sizes "
                  "(its best is reported).")
# model / mfu
flags.DEFINE_list("image_tokens", ["256", "1024", "4096", "16384"],
                  "model: image token counts (square grids).")
flags.DEFINE_list("backbones", ["mamba2", "transformer"], "model: backbones to compare.")
flags.DEFINE_integer("model_batch", 1, "model/mfu: global batch size.")
flags.DEFINE_integer("d_model", 128, "model/mfu: width.")
flags.DEFINE_integer("n_layers", 4, "model/mfu: blocks.")
flags.DEFINE_float("model_mlp_ratio", 2.0, "model: the Mamba-2 blocks' SwiGLU ratio; the "
                   "Transformer's is widened to match the parameter count.")
# sampler
flags.DEFINE_string("workdir", None, "sampler: a trained digits workdir.")


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


PEER_PATH = "mamba_ssm/modules/ssd_minimal.py"


def peer_source(peer_file=None) -> str:
  """The source of mamba_ssm's ``ssd_minimal.py``: from ``peer_file``, else from the mamba-ssm
  sdist fetched by ``pip download`` into a temporary directory (nothing of it is kept)."""
  if peer_file:
    if not os.path.isfile(peer_file):
      raise app.UsageError(f"--peer_file={peer_file} does not exist; pass the path of "
                           f"{PEER_PATH} from a mamba_ssm checkout or sdist")
    with open(peer_file) as f:
      return f.read()
  with tempfile.TemporaryDirectory() as tmp:
    # The sdist's metadata step imports torch (so no build isolation) and would build CUDA
    # kernels unless told to skip them; only the tarball is used.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "--quiet", "mamba-ssm", "-d", tmp]
    env = dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE")
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
      proc = types.SimpleNamespace(returncode=1, stderr=str(e))
    tarballs = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
    if proc.returncode or not tarballs:
      raise app.UsageError(
          "--peer: could not download the mamba-ssm sdist with `" + " ".join(cmd[2:]) + "` "
          "(preparing its metadata needs torch, setuptools and wheel importable: "
          + proc.stderr.strip()[-500:] + "); pass --peer_file=PATH/" + PEER_PATH + " instead")
    with tarfile.open(os.path.join(tmp, tarballs[0])) as tar:
      members = [m for m in tar.getmembers() if m.name.endswith(PEER_PATH)]
      if not members:
        raise app.UsageError(f"--peer: {tarballs[0]} has no {PEER_PATH}; pass --peer_file")
      return tar.extractfile(members[0]).read().decode()


def check_peer_deps():
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    import einops  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise app.UsageError(f"--peer needs torch and einops ({e}); e.g. `pip install torch einops`"
                         " in a virtual environment") from e


def load_peer(source: str):
  """``ssd_minimal_discrete`` from the source of ``ssd_minimal.py``.

  Its module imports the Triton kernels of mamba_ssm (used only by its own test), which are
  replaced by a stub while it is executed.
  """
  check_peer_deps()
  stubs = {}
  for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton",
               "mamba_ssm.ops.triton.ssd_combined"):
    stubs[name] = types.ModuleType(name)
  stubs["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined = None
  saved = {k: sys.modules.get(k) for k in stubs}
  sys.modules.update(stubs)
  try:
    namespace = {"__name__": "ssd_minimal"}
    exec(compile(source, PEER_PATH, "exec"), namespace)  # pylint: disable=exec-used
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  if "ssd_minimal_discrete" not in namespace:
    raise app.UsageError(f"--peer: the given {PEER_PATH} defines no ssd_minimal_discrete")
  return namespace["ssd_minimal_discrete"]


def time_peer(peer, x, dt, A, B, C, chunk: int, *, warmup: int, repeats: int) -> float:
  """Median fwd+bwd seconds of the peer in float32 on the CPU, on the same inputs as ours.

  Its inputs are per head and pre-discretised (X = x dt, A = A dt; B and C repeated over the
  heads of each group), all inside the autograd graph so that every input gets a gradient, as
  ours do.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  h, g = x.shape[2], B.shape[2]
  leaves = [torch.from_numpy(np.asarray(v, np.float32)).requires_grad_() for v in
            (x, dt, A, B, C)]

  def step():
    tx, tdt, tA, tB, tC = leaves
    for v in leaves:
      v.grad = None
    y, _ = peer(tx * tdt[..., None], tA * tdt, tB.repeat_interleave(h // g, dim=2),
                tC.repeat_interleave(h // g, dim=2), chunk)
    y.sum().backward()

  for _ in range(1 + warmup):
    step()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_ssd():
  if FLAGS.peer:
    check_peer_deps()  # before downloading anything
  peer = load_peer(peer_source(FLAGS.peer_file)) if FLAGS.peer else None
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
          peer_times[chunk] = time_peer(peer, x, dt, A, B, C, chunk, warmup=FLAGS.warmup,
                                        repeats=FLAGS.repeats)
      best = min(peer_times, key=peer_times.get) if peer_times else None
      row["peer"] = peer_times[best] if peer_times else None
      row["peer_chunk"] = best
    print(f"  L={length}: " + ", ".join(
          f"{k}={v * 1e3:.1f}ms" if v else f"{k}=skipped" for k, v in row.items()
          if k not in ("length", "peer_chunk")), flush=True)
    rows.append(row)
  print_table(rows)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"machine": machine(), "flags": flag_values(), "rows": rows}, f, indent=1)


def machine() -> str:
  dev = jax.devices()[0]
  return (f"{dev.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s), "
          f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
          f"malloc: {allocator.in_use()}")


def flag_values() -> dict:
  return {k: getattr(FLAGS, k) for k in ("batch", "heads", "headdim", "state", "groups",
                                         "dtype", "chunk_sizes")}


def print_table(rows):
  names = [k for k in rows[0] if k not in ("length", "peer_chunk")]
  print(f"\nSSD fwd+bwd, median ms; {machine()}; {flag_values()}")
  if "peer" in names:
    import torch  # pylint: disable=g-import-not-at-top
    print(f"peer: mamba_ssm ssd_minimal_discrete, torch {torch.__version__} CPU "
          f"({torch.get_num_threads()} threads), float32, best of chunks "
          f"{','.join(FLAGS.peer_chunks)} (chunk per length: "
          + ", ".join(f"{r['length']}: {r['peer_chunk']}" for r in rows) + ")")
  header = "| length | " + " | ".join(f"{k} (ms)" for k in names)
  ratio_cols = [k for k in names if k != "xla"] if "xla" in names else []
  if ratio_cols:   # with xla alone there is nothing to compare it with
    header += " | " + " | ".join(f"{k} / xla" for k in ratio_cols)
  print(header + " |")
  print("|" + "---|" * (1 + len(names) + len(ratio_cols)))
  fmt = lambda v: "skipped (memory)" if v is None else f"{v * 1e3:.1f}"
  for row in rows:
    cells = [str(row["length"])] + [fmt(row[k]) for k in names]
    for k in ratio_cols:
      cells.append("-" if row[k] is None or row["xla"] is None else f"{row[k] / row['xla']:.2f}x")
    print("| " + " | ".join(cells) + " |")
  for k in names:  # growth from the shortest to each longer length (linear: the length ratio)
    base = rows[0]
    for row in rows[1:]:
      if row[k] and base[k]:
        print(f"{k}: {row['length']} / {base['length']} tokens = "
              f"{row[k] / base[k]:.1f}x the time (linear: {row['length'] / base['length']:.0f}x)")


# ----------------------------------------------------------------------------- model / mfu


def _n_params(c) -> int:
  """Parameters of the model ``c`` builds, from abstract shapes (nothing is allocated)."""
  from mdm_jax.training.trainer import Trainer
  from mdm_jax.training import sharding
  return Trainer(c, sharding.make_mesh(), vocab_size=256, num_classes=10).num_params


def bench_config(backbone: str, image_tokens: int):
  """A digits-like config at ``image_tokens`` image tokens (patch 2, 1 channel).

  Both backbones get adaLN-Zero blocks of mixer + SwiGLU. The Mamba-2 mixer has more weights
  than attention's 4 d^2 (in_proj alone is ~4.3 d^2), so the Transformer's SwiGLU is widened
  by the difference: its hidden size is solved from the two abstract parameter counts (the
  count is linear in it, 3 * d_model weights per hidden unit per block), which matches the
  totals to within one hidden unit per block."""
  from experiments import configs
  c = configs.load("digits")
  side = int(round(image_tokens ** 0.5)) * c.model.patch_size
  c.data.image_size = side
  c.batch_size = FLAGS.model_batch
  d = FLAGS.d_model
  hidden = int(FLAGS.model_mlp_ratio * d)
  c.model.update(dict(d_model=d, n_layers=FLAGS.n_layers, backbone="mamba2", chunk_size=64,
                      remat=True, mlp_ratio=(hidden + 0.5) / d))
  if backbone == "transformer":
    target = _n_params(c)
    c.model.backbone = "transformer"
    hidden += round((target - _n_params(c)) / (3 * d * FLAGS.n_layers))
    c.model.mlp_ratio = (hidden + 0.5) / d   # + 0.5: int(ratio * d) is exactly `hidden`
  elif backbone != "mamba2":
    raise app.UsageError(f"unknown backbone {backbone!r}; choose mamba2 or transformer")
  return c


def train_step_flops(mc, batch: int) -> float:
  """Analytic matmul FLOPs of one train step (forward + backward = 3x forward; remat's
  recomputation not counted: this is model FLOPs, the MFU convention)."""
  layout = mc.layout()
  L = layout.length
  d = mc.d_model
  per_token = 0.0
  if mc.backbone == "mamba2":
    d_inner = mc.expand * d
    h = d_inner // mc.headdim
    g, n, p = mc.ngroups, mc.d_state, mc.headdim
    proj_out = 2 * d_inner + 2 * g * n + h
    q = min(mc.chunk_size, L)
    per_token += 2 * d * proj_out + 2 * d_inner * d            # in_proj, out_proj
    per_token += 2 * q * n * g + 2 * q * p * h                  # C.B^T (per group), y_diag
    per_token += 2 * 2 * p * n * h                              # chunk states, state->output
  else:
    per_token += 2 * d * 3 * d + 2 * d * d + 2 * 2 * L * d      # qkv, out, scores, AV
  if mc.mlp_ratio > 0:
    per_token += 3 * 2 * d * int(mc.mlp_ratio * d)
  denoiser = mc.n_layers * per_token * L
  heads = 2 * d * mc.latent_dim * layout.n_image + 2 * d * (mc.vocab_size + 1) * mc.max_text_len
  vae_per_token = 2 * mc.vae_depth * 2 * (2 * mc.vae_width * 2 * mc.vae_width)  # enc + dec MLPs
  vae = vae_per_token * (layout.n_image + mc.max_text_len) * 2   # text encoded twice
  return 3.0 * batch * (denoiser + heads + vae)


def matmul_peak_flops(n: int = 2048) -> float:
  """Measured float32 matmul throughput of this machine (FLOP/s)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  return 2 * n**3 / time_fn(f, a, warmup=2, repeats=5)


def bench_model():
  from mdm_jax.training.trainer import Trainer
  from mdm_jax.training import sharding
  mesh = sharding.make_mesh()
  rows = []
  for tokens in map(int, FLAGS.image_tokens):
    row = {"image_tokens": tokens}
    for backbone in FLAGS.backbones:
      c = bench_config(backbone, tokens)
      tr = Trainer(c, mesh, vocab_size=256, num_classes=10)
      batch = tr.dummy_batch(c.batch_size)
      state = tr.init_state()
      with tr.mesh_context():
        compiled = tr.train_step.lower(tr.abstract_state, batch).compile()
        mem = compiled.memory_analysis()
        peak_mib = (None if mem is None else
                    (mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**20)
        if peak_mib is not None and peak_mib > FLAGS.max_gib * 1024:
          row[backbone] = {"ms": None, "params": tr.num_params, "peak_mib": peak_mib}
          print(f"  {tokens} tokens, {backbone}: skipped, the compiled step needs "
                f"{peak_mib / 1024:.1f} GiB > --max_gib={FLAGS.max_gib}", flush=True)
          continue
        step = lambda s: compiled(s, batch)[0]
        jax.block_until_ready(state := step(state))
        times = []
        for _ in range(FLAGS.repeats):
          t0 = time.perf_counter()
          state = jax.block_until_ready(step(state))
          times.append(time.perf_counter() - t0)
      row[backbone] = {"ms": statistics.median(times) * 1e3, "params": tr.num_params,
                       "peak_mib": peak_mib,
                       "flops": train_step_flops(tr.model_cfg, c.batch_size)}
      print(f"  {tokens} tokens, {backbone}: {row[backbone]}", flush=True)
    rows.append(row)
  print(f"\nTrain step (fwd+bwd+AdamW), batch {FLAGS.model_batch}, d_model {FLAGS.d_model}, "
        f"{FLAGS.n_layers} blocks; {machine()}")
  names = FLAGS.backbones
  print("| image tokens | " + " | ".join(f"{b} ms | {b} peak MiB" for b in names)
        + " | params (M) |")
  print("|" + "---|" * (2 + 2 * len(names)))
  for row in rows:
    cells = [str(row["image_tokens"])]
    for b in names:
      r = row[b]
      ms = "skipped (memory)" if r["ms"] is None else f"{r['ms']:.0f}"
      cells += [ms, "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"]
    cells.append(" / ".join(f"{row[b]['params'] / 1e6:.2f}" for b in names))
    print("| " + " | ".join(cells) + " |")
  for b in names:
    ms = [row[b]["ms"] for row in rows]
    growth = [f"{m1 / m0:.1f}x" if m0 and m1 else "-" for m0, m1 in zip(ms, ms[1:])]
    print(f"{b}: time growth per 4x tokens: {', '.join(growth)}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"machine": machine(), "rows": rows}, f, indent=1)


def bench_mfu():
  """Achieved FLOP/s of the digits train step against this machine's measured matmul peak."""
  from experiments import configs
  from mdm_jax.training.trainer import Trainer
  from mdm_jax.training import sharding
  peak = matmul_peak_flops()
  c = configs.load("digits")
  mesh = sharding.make_mesh()
  tr = Trainer(c, mesh, vocab_size=256, num_classes=10)
  batch = tr.dummy_batch(c.batch_size)
  state = tr.init_state()
  step = jax.jit(lambda s: tr.update(s, batch)[0])  # no donation: the state is reused
  with tr.mesh_context():
    seconds = time_fn(step, state, warmup=FLAGS.warmup, repeats=FLAGS.repeats)
  flops = train_step_flops(tr.model_cfg, c.batch_size)
  print(f"\nMFU of the digits train step (batch {c.batch_size}); {machine()}")
  print("| step ms | model GFLOP/step | achieved GFLOP/s | matmul peak GFLOP/s | MFU |")
  print("|---|---|---|---|---|")
  print(f"| {seconds * 1e3:.0f} | {flops / 1e9:.2f} | {flops / seconds / 1e9:.1f} | "
        f"{peak / 1e9:.1f} | {flops / seconds / peak:.1%} |")


def bench_sampler():
  """Sampler steps against class-conditional quality on a trained digits workdir."""
  from experiments.evaluate import evaluate
  if not FLAGS.workdir:
    raise app.UsageError("bench sampler needs --workdir of a trained digits run")
  # (solver, grid steps): DPM-Solver-2 takes two network evaluations per step, so 5/10/25
  # steps are its 10/20/50 evaluations; every setting adds one final denoising evaluation.
  settings = [("dpm2", 5), ("dpm2", 10), ("dpm2", 25), ("dpm++2m", 10), ("dpm++2m", 20),
              ("dpm++2m", 50), ("ddpm", 250), ("ddpm", 1000)]
  rows = []
  for solver, steps in settings:
    r = evaluate(FLAGS.workdir, per_class=20, tasks=("class2img",), write=False,
                 overrides={"sample.image_solver": solver, "sample.steps": steps})
    rows.append((solver, steps, r))
    print(f"  {solver} {steps}: {r.get('class_accuracy')}, {r.get('fid_digits')}", flush=True)
  print(f"\nclass2img on digits (200 samples, guidance from the config); {machine()}")
  print("| image sampler | steps | network evaluations | class accuracy | "
        "FID (digits features) | seconds |")
  print("|---|---|---|---|---|---|")
  for solver, steps, r in rows:
    nfe = (2 if solver == "dpm2" else 1) * steps + 1
    print(f"| {solver} | {steps} | {nfe} (x2 with guidance) | {r['class_accuracy']:.3f} | "
          f"{r['fid_digits']:.3f} | {r['class2img_seconds']:.1f} |")


def bench_data():
  """Batches/s of the digits input pipeline (batch 64, 16x16 images, 32 text ids; the
  tokenizer trained as a run trains it): best of ``--repeats`` passes of 200 batches."""
  from data import digits, pipeline, tokenizer as tokenizer_lib
  tok = tokenizer_lib.Tokenizer.train(digits.text_corpus(), None, 256)
  it = pipeline.make_dataset("digits", split="train", batch_size=64, image_size=16, channels=1,
                             max_text_len=32, tokenizer=tok, seed=0)
  next(it)
  rates = []
  for _ in range(FLAGS.repeats):
    t = time.perf_counter()
    for _ in range(200):
      next(it)
    rates.append(200 / (time.perf_counter() - t))
  print(f"digits pipeline, batch 64 (16x16, 32 text ids): {max(rates):.0f} batches/s best, "
        f"{statistics.median(rates):.0f} median of {FLAGS.repeats}; {machine()}")


BENCHES = {"ssd": bench_ssd, "model": bench_model, "mfu": bench_mfu, "sampler": bench_sampler,
           "data": bench_data}


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHES:
    raise app.UsageError(f"usage: python -m experiments.bench {{{','.join(BENCHES)}}} [flags]")
  BENCHES[argv[1]]()


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()  # XLA:CPU's steps, up to a third faster
  app.run(main)
