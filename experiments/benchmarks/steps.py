"""``bench steps --configs=digits,video_digits``: the train step of named configs timed side by
side in one process (rounds of each in turn, so the machine's drift hits them alike), with the
whole loop's estimate ``total_steps x step``: how a config's training time compares with
another's on the same machine, the measure the laptop configs are budgeted by."""
from __future__ import annotations

import statistics
import time

from absl import app, flags
import jax

from experiments.benchmarks.common import machine, print_markdown, write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["digits", "video_digits"],
                  "steps: named configs (or config files); the first is the reference.")
flags.DEFINE_integer("steps_per_round", 8, "steps: train steps timed together per round.")


def bench_steps():
  from experiments import configs
  from mdm_jax.training import sharding
  from mdm_jax.training.trainer import Trainer
  if not FLAGS.configs:
    raise app.UsageError("bench steps needs --configs=NAME[,NAME...]")
  runs = {}
  for name in FLAGS.configs:
    c = configs.load(name)
    tr = Trainer(c, sharding.make_mesh(), vocab_size=256, num_classes=10)
    batch, state = tr.dummy_batch(c.batch_size), tr.init_state()
    with tr.mesh_context():
      t0 = time.perf_counter()
      state = jax.block_until_ready(tr.train_step(state, batch)[0])
    runs[name] = dict(trainer=tr, batch=batch, state=state, config=c, times=[],
                      compile_s=time.perf_counter() - t0)
    print(f"  {name}: compiled in {runs[name]['compile_s']:.1f} s", flush=True)
  for _ in range(FLAGS.warmup + FLAGS.repeats):
    for r in runs.values():
      tr = r["trainer"]
      with tr.mesh_context():
        t0 = time.perf_counter()
        for _ in range(FLAGS.steps_per_round):
          r["state"] = tr.train_step(r["state"], r["batch"])[0]
        jax.block_until_ready(r["state"])
      r["times"].append((time.perf_counter() - t0) / FLAGS.steps_per_round)
  ref_loop_s = None
  rows, table = [], []
  for name, r in runs.items():
    c, tr = r["config"], r["trainer"]
    ms = statistics.median(r["times"][FLAGS.warmup:]) * 1e3
    loop_s = ms * c.total_steps / 1e3
    ref_loop_s = loop_s if ref_loop_s is None else ref_loop_s
    rows.append(dict(config=name, ms=ms, batch=c.batch_size, total_steps=c.total_steps,
                     tokens=tr.model_cfg.n_image_tokens, params=tr.num_params, loop_s=loop_s))
    table.append([name, str(c.batch_size), str(tr.model_cfg.n_image_tokens),
                  f"{tr.num_params / 1e6:.2f}", f"{ms:.0f}", str(c.total_steps),
                  f"{loop_s:.0f}", f"{loop_s / ref_loop_s:.2f}x"])
  print(f"\nTrain step, medians of {FLAGS.repeats} rounds of {FLAGS.steps_per_round} steps per "
        f"config in turn; {machine()}")
  print_markdown(["config", "batch", "visual tokens", "params (M)", "step ms", "total_steps",
                  "loop estimate s", f"loop / {FLAGS.configs[0]}'s"], table)
  write_json(FLAGS.out, rows=rows)
