"""``bench model``: train-step time and compiled memory of MDM against the Transformer backbone
at matched parameter counts, per image-token count (``--image_tokens``) or, for clips, per clip
length (``--clip_frames``: frames of ``--frame_tokens`` tokens each); a step whose compiled
memory exceeds ``--max_gib`` is reported, not run."""
from __future__ import annotations

import statistics
import time

from absl import app, flags
import jax

from experiments.benchmarks.common import machine, print_markdown, write_json
from experiments.benchmarks.mfu import train_step_flops

FLAGS = flags.FLAGS
flags.DEFINE_list("image_tokens", ["256", "1024", "4096", "16384"],
                  "model: image token counts (square grids).")
flags.DEFINE_list("clip_frames", [], "model: clip lengths in frames (each of --frame_tokens "
                  "tokens, tubelet 1); set, it replaces --image_tokens.")
flags.DEFINE_integer("frame_tokens", 256, "model: tokens per frame with --clip_frames.")
flags.DEFINE_list("backbones", ["mamba2", "transformer"], "model: backbones to compare.")
flags.DEFINE_integer("model_batch", 1, "model: global batch size.")
flags.DEFINE_integer("d_model", 128, "model: width.")
flags.DEFINE_integer("n_layers", 4, "model: blocks.")
flags.DEFINE_float("model_mlp_ratio", 2.0, "model: the Mamba-2 blocks' SwiGLU ratio; the "
                   "Transformer's is widened to match the parameter count.")


def _n_params(c) -> int:
  """Parameters of the model ``c`` builds, from abstract shapes (nothing is allocated)."""
  from mdm_jax.training.trainer import Trainer
  from mdm_jax.training import sharding
  return Trainer(c, sharding.make_mesh(), vocab_size=256, num_classes=10).num_params


def bench_config(backbone: str, image_tokens: int, frames: int = 1):
  """A digits-like config at ``image_tokens`` image tokens per frame (patch 2, 1 channel), on
  clips of ``frames`` frames (tubelet 1) when ``frames > 1``.

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
  c.model.update(dict(frames=frames, tubelet=1))
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


def bench_model():
  from mdm_jax.training.trainer import Trainer
  from mdm_jax.training import sharding
  mesh = sharding.make_mesh()
  rows = []
  clips = bool(FLAGS.clip_frames)
  sizes = ([(FLAGS.frame_tokens, int(t)) for t in FLAGS.clip_frames] if clips else
           [(int(t), 1) for t in FLAGS.image_tokens])
  for tokens, frames in sizes:
    row = {"image_tokens": tokens * frames, "frames": frames}
    for backbone in FLAGS.backbones:
      c = bench_config(backbone, tokens, frames)
      tr = Trainer(c, mesh, vocab_size=256, num_classes=10)
      batch = tr.dummy_batch(c.batch_size)
      with tr.mesh_context():
        compiled = tr.train_step.lower(tr.abstract_state, batch).compile()
        mem = compiled.memory_analysis()
        peak_mib = (None if mem is None else
                    (mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**20)
        if peak_mib is not None and peak_mib > FLAGS.max_gib * 1024:
          row[backbone] = {"ms": None, "params": tr.num_params, "peak_mib": peak_mib}
          print(f"  {tokens * frames} tokens, {backbone}: skipped, the compiled step needs "
                f"{peak_mib / 1024:.1f} GiB > --max_gib={FLAGS.max_gib}", flush=True)
          continue
        # The state is made only for a step that fits: the guard is there to keep a size that
        # does not fit from being allocated. The step donates its state, so each call takes the
        # last one's: common.time_fn, which calls with the same arguments each time, cannot
        # time it.
        state = tr.init_state()
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
      print(f"  {tokens * frames} tokens, {backbone}: {row[backbone]}", flush=True)
    rows.append(row)
  what = f"clips of {FLAGS.frame_tokens}-token frames" if clips else "images"
  print(f"\nTrain step (fwd+bwd+AdamW) on {what}, batch {FLAGS.model_batch}, "
        f"d_model {FLAGS.d_model}, {FLAGS.n_layers} blocks; {machine()}")
  names = FLAGS.backbones
  table = []
  for row in rows:
    cells = ([str(row["frames"])] if clips else []) + [str(row["image_tokens"])]
    for b in names:
      r = row[b]
      ms = "skipped (memory)" if r["ms"] is None else f"{r['ms']:.0f}"
      cells += [ms, "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"]
    cells.append(" / ".join(f"{row[b]['params'] / 1e6:.2f}" for b in names))
    table.append(cells)
  header = (["frames"] if clips else []) + ["image tokens"] + [c for b in names for c in (f"{b} ms", f"{b} peak MiB")]
  print_markdown(header + ["params (M)"], table)
  for b in names:
    ms = [row[b]["ms"] for row in rows]
    growth = [f"{m1 / m0:.1f}x" if m0 and m1 else "-" for m0, m1 in zip(ms, ms[1:])]
    step = "per step of --clip_frames" if clips else "per 4x tokens"
    print(f"{b}: time growth {step}: {', '.join(growth)}")
  write_json(FLAGS.out, rows=rows)
