r"""Compiles the Pallas Mosaic SSD kernel (forward + backward) with the TPU compiler, on a CPU host.

With libtpu installed, ``jax.experimental.topologies`` describes a TPU slice without a TPU; one
of its devices is enough for the kernel at one device's shapes. The default shapes are
imagenet256's per device on its home mesh (fsdp over the slice, global batch 256 over 64 chips):
batch 4, 64 heads of ``model.headdim``, 1192 tokens, ``model.ngroups`` groups of
``model.d_state``, ``model.chunk_size``. Prints, per TPU generation and dtype: the compile time,
the compiled program's memory (arguments, outputs, temporaries: ``memory_analysis``), and for
each ``tpu_custom_call`` (the Mosaic kernels) its operand and result shapes as the kernel pads
them, with the tiled layouts the TPU compiler chose, and the scoped VMEM it reserved for the
kernel (``used_scoped_memory_configs`` in the compiled HLO's backend config), and the
compiled program's "bytes accessed" from XLA's cost analysis (dominated by the layout copies and
pads around the kernels: a layout change that is a pure transpose can become a bitcast, a pad
cannot).

It imports only ``pallas_kernels.ssd.ssd`` and the config, so it measures whichever checkout is
first on ``PYTHONPATH`` (run it from this file's path to compare another checkout)::

  PYTHONPATH=$PWD python experiments/kernel_compile.py
  PYTHONPATH=/path/to/main python experiments/kernel_compile.py --dtypes=bfloat16

(On a host where other processes hold libtpu, ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` lets it load.)
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time

from absl import app
from absl import flags

flags.DEFINE_list("topologies", ["v5e:2x2", "v5p:2x2x1"],
                  "TPU slices (jax.experimental.topologies names); the kernel runs on one chip.")
flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "dtype of x, B, C and dy (dt is float32).")
flags.DEFINE_string("config", "imagenet256", "config whose headdim, d_state, ngroups and chunk "
                    "size are used.")
flags.DEFINE_integer("batch", 4, "per-device batch.")
flags.DEFINE_integer("heads", 64, "per-device heads.")
flags.DEFINE_integer("length", 1192, "tokens per sequence.")
flags.DEFINE_string("out", None, "also write the results as JSON here.")
FLAGS = flags.FLAGS


@dataclasses.dataclass
class KernelCall:
  """One ``tpu_custom_call`` of the compiled module."""
  name: str
  operands: list[str]    # e.g. "bf16[4,64,64,1280]"
  results: list[str]     # with the TPU compiler's tiled layout: "bf16[..]{3,2,1,0:T(8,128)(2,1)}"
  scoped_vmem_bytes: int


def kernel_calls(hlo_text: str) -> list[KernelCall]:
  """The Mosaic kernels of a compiled module's HLO text."""
  calls = []
  for line in hlo_text.splitlines():
    if 'custom_call_target="tpu_custom_call"' not in line:
      continue
    result_type = re.match(r"\s*(?:ROOT )?%\S+ = (.*?) custom-call\(", line).group(1)
    operands = re.search(r"operand_layout_constraints=\{((?:[^{}]|\{[^{}]*\})*)\}", line).group(1)
    name = re.search(r'op_name="([^"]*)"', line)
    vmem = re.search(r'"used_scoped_memory_configs":\[(.*?)\]', line).group(1)
    calls.append(KernelCall(
        name=name.group(1).rsplit("/", 2)[-2] if name else "?",
        operands=re.findall(r"[a-z]+\d*\[[\d,]*\]", operands),
        results=re.findall(r"[a-z]+\d*\[[\d,]*\](?:\{[^}]*\})?", result_type),
        scoped_vmem_bytes=sum(int(s) for s in re.findall(r'"size":"(\d+)"', vmem))))
  return calls


def compile_ssd(topology: str, dtype: str, *, b: int, l: int, h: int, p: int, g: int, n: int,
                chunk: int) -> dict:
  """Compiles the kernel's forward and backward (one jit: y and the VJP of x, dt, A, B, C) for
  one chip of ``topology``; returns the compile time, ``memory_analysis`` and ``kernel_calls``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from pallas_kernels.ssd import ssd  # pylint: disable=g-import-not-at-top

  device = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  dtype = jnp.dtype(dtype)
  args = (spec((b, l, h, p), dtype), spec((b, l, h), jnp.float32), spec((h,), jnp.float32),
          spec((b, l, g, n), dtype), spec((b, l, g, n), dtype), spec((b, l, h, p), dtype))

  def fwd_bwd(x, dt, A, B, C, dy):
    f = lambda *a: ssd(*a, chunk_size=chunk, lowering="tpu", interpret=False)[0]
    y, vjp = jax.vjp(f, x, dt, A, B, C)
    return y, vjp(dy)

  t0 = time.perf_counter()
  lowered = jax.jit(fwd_bwd).trace(*args).lower(lowering_platforms=("tpu",))
  compiled = lowered.compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(
      topology=topology, device_kind=device.device_kind, dtype=dtype.name,
      shapes=dict(b=b, l=l, h=h, p=p, g=g, n=n, chunk=chunk),
      compile_seconds=round(seconds, 1),
      memory=dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
                  temporaries=mem.temp_size_in_bytes,
                  generated_code=mem.generated_code_size_in_bytes),
      xla_bytes_accessed=int(cost.get("bytes accessed", 0)),
      kernels=[dataclasses.asdict(c) for c in kernel_calls(compiled.as_text())])


def print_result(r: dict):
  mib = lambda v: f"{v / 2**20:.1f} MiB"
  s = r["shapes"]
  print(f"\n{r['topology']} ({r['device_kind']}), {r['dtype']}: x ({s['b']}, {s['l']}, {s['h']}, "
        f"{s['p']}), B/C groups {s['g']} x d_state {s['n']}, chunk {s['chunk']}; "
        f"compile {r['compile_seconds']} s")
  print("  memory: " + ", ".join(f"{k} {mib(v)}" for k, v in r["memory"].items()))
  print(f"  bytes accessed (XLA cost analysis): {mib(r['xla_bytes_accessed'])}")
  true_x = s["b"] * s["l"] * s["h"] * s["p"]
  for k in r["kernels"]:
    x = [int(d) for d in re.search(r"\[([\d,]*)\]", k["operands"][0]).group(1).split(",")]
    print(f"  {k['name']}: scoped VMEM {mib(k['scoped_vmem_bytes'])}; x operand "
          f"{tuple(x)} = {math.prod(x) / true_x:.2f}x the true size")
    print(f"    operands: {', '.join(k['operands'])}")
    print(f"    results:  {', '.join(k['results'])}")


def main(argv):
  del argv
  import importlib  # pylint: disable=g-import-not-at-top
  mc = importlib.import_module(f"experiments.configs.{FLAGS.config}").get_config().model
  results = []
  for topology in FLAGS.topologies:
    for dtype in FLAGS.dtypes:
      r = compile_ssd(topology, dtype, b=FLAGS.batch, l=FLAGS.length, h=FLAGS.heads,
                      p=mc.headdim, g=mc.ngroups, n=mc.d_state, chunk=mc.chunk_size)
      print_result(r)
      results.append(r)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
