"""``bench steps --configs=digits,video_digits``: the train step of named configs timed side by
side in one process (rounds of each in turn, so the machine's drift hits them alike), with the
whole loop's estimate ``total_steps x step``: how a config's training time compares with
another's on the same machine, the measure the laptop configs are budgeted by. ``--variant``
adds a config with some fields changed (``--variant='rolled=digits model.scan_unroll=1'``): a
config's old and new settings, timed side by side."""
from __future__ import annotations

import ast
import statistics
import time

from absl import app, flags
import jax

from experiments.benchmarks.common import machine, print_markdown, write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["digits", "video_digits"],
                  "steps: named configs (or config files); the first is the reference.")
flags.DEFINE_multi_string(
    "variant", [], "steps: LABEL=CONFIG key=value ... (repeatable): CONFIG with the given "
    "fields changed, timed after --configs under LABEL; values are Python literals.")
flags.DEFINE_integer("steps_per_round", 8, "steps: train steps timed together per round.")


def parse_variant(spec: str) -> tuple[str, str, dict]:
  """``"LABEL=CONFIG key=value ..."`` -> (label, config, {dotted key: value}); a value that is
  not a Python literal stays a string."""
  head, *pairs = spec.split()
  label, sep, config = head.partition("=")
  if not sep or not label or not config or any("=" not in p for p in pairs):
    raise app.UsageError(f"--variant={spec!r}: write LABEL=CONFIG key=value ..., e.g. "
                         "--variant='rolled=digits model.scan_unroll=1'")
  values = {}
  for pair in pairs:
    key, value = pair.split("=", 1)
    try:
      values[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      values[key] = value
  return label, config, values


def with_fields(config, values: dict, label: str):
  """``config`` with the dotted fields of ``values`` set (``run_io.apply_overrides``); an
  unknown field is a UsageError naming the variant."""
  from mdm_jax.run_io import apply_overrides
  try:
    apply_overrides(config, values)
  except ValueError as e:
    raise app.UsageError(f"--variant {label!r}: {e}") from None
  return config


def bench_steps():
  from experiments import configs
  from mdm_jax.training import sharding
  from mdm_jax.training.trainer import Trainer
  if not FLAGS.configs and not FLAGS.variant:
    raise app.UsageError("bench steps needs --configs=NAME[,NAME...] or --variant")
  todo = [(name, configs.load(name)) for name in FLAGS.configs]
  for spec in FLAGS.variant:
    label, name, values = parse_variant(spec)
    todo.append((label, with_fields(configs.load(name), values, label)))
  runs = {}
  for name, c in todo:
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
                  "loop estimate s", f"loop / {todo[0][0]}'s"], table)
  write_json(FLAGS.out, rows=rows)
