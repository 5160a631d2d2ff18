r"""``train --dry_run``: what a config costs on a TPU slice, found ahead of time on any machine.

Two paths:

* ``--topology=SLICE`` (needs libtpu: ``pip install 'mdm-jax[tpu]'``): the real TPU compiler,
  run on this host against a description of the slice's chips
  (``jax.experimental.topologies``), compiles the full train step and the sampling step of the
  config, the Pallas Mosaic SSD kernels included, on the config's mesh laid over the slice.
  It prints the compile times, the compiler's per-chip memory against the chip's HBM, the
  compiled FLOPs and bytes (plus the SSD kernels' FLOPs, which the compiler does not count) and
  a roofline estimate of the step time. A config that does not fit, a Mosaic error or a
  partitioning error fails the command with the cause and the knob to turn.
  ``--topology=v5p`` (a chip without a size) finds the smallest slice of that chip on which the
  config compiles and fits, doubling from the smallest.
* Without ``--topology``: parameter count, the train step compiled by XLA:CPU on
  ``--dry_run_devices`` fake CPU devices, then lowered (not compiled) for TPU with the kernels.

Slice names follow Google Cloud's accelerator types: for v4 and v5p the number counts
TensorCores, two per chip (``v5p-64`` is 32 chips, topology 2x4x4), for v5e and v6e it counts
chips (``v5e-16`` is 16 chips, 4x4). A topology may also be given as ``v5p:4x4x12``.

  python -m experiments.train --config=imagenet256 --dry_run --topology=v5p-128
  python -m experiments.train --config=digits --dry_run --topology=v5e
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import tasks
from mdm_jax.models.mdm import MDM
from mdm_jax.training import sharding
from mdm_jax.training.trainer import Trainer, model_config

GiB = 2**30
INSTALL_HINT = ("libtpu is not installed, and the TPU compiler comes with it: "
                "pip install 'mdm-jax[tpu]' (or pip install 'jax[tpu]==%s'). Without "
                "--topology the dry run compiles on fake CPU devices instead." % jax.__version__)


# ----------------------------------------------------------------------------- chips and slices
@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip's published numbers (Google Cloud's TPU pages, per chip)."""
  name: str
  hbm_bytes: int          # HBM capacity
  peak_flops: float       # bf16 dense FLOP/s
  hbm_bandwidth: float    # bytes/s
  names_count_cores: bool  # accelerator type "v5p-N" counts TensorCores, two per chip
  dims: int               # torus dimensions: 3 (v4, v5p) or 2 (v5e, v6e)
  max_chips: int          # largest single slice offered here


# cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}: HBM, bf16 peak, HBM bandwidth per chip.
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, True, 3, 4096),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, False, 2, 256),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, True, 3, 6144),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, False, 2, 256),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A single TPU slice: its chip, shape (chips per torus dimension) and accelerator name."""
  chip: Chip
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    """Google Cloud's accelerator type, e.g. v5p-64 (32 chips) or v5e-16 (16 chips)."""
    return f"{self.chip.name}-{self.chips * (2 if self.chip.names_count_cores else 1)}"

  @property
  def topology_name(self) -> str:
    return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

  def topology_kwargs(self) -> dict:
    """``get_topology_desc``'s arguments (as MaxText's train_compile passes them): v4 and v5p
    chips are one device each ("megacore": the two TensorCores act as one), full cubes and
    16-chip rows wrap around."""
    single = self.chips == 1
    if self.chip.dims == 3:
      wrap = (self.chips >= 64 and all(d % 4 == 0 for d in self.shape),) * 3
    else:
      wrap = tuple(d == 16 for d in self.shape) + (False,)
    return dict(topology_name=self.topology_name,
                chip_config_name="megacore" if self.chip.names_count_cores else "default",
                chips_per_host_bounds=(1, 1, 1) if single else (2, 2, 1), wrap=wrap)


def _grow(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The next slice twice as large: the last of the smallest dimensions doubles (2x2x1,
  2x2x2, 2x2x4, 2x4x4, 4x4x4, ...; 2x2, 2x4, 4x4, 4x8, ...), Google's standard shapes."""
  i = max(k for k, d in enumerate(shape) if d == min(shape))
  return shape[:i] + (shape[i] * 2,) + shape[i + 1:]


def smallest_slice(chip: Chip) -> Slice:
  """v5e and v6e: one chip (v5e-1, Colab's TPU); v4 and v5p: one host of four (v5p-8)."""
  return Slice(chip, (1, 1) if chip.dims == 2 else (2, 2, 1))


def slice_of(chip: Chip, chips: int) -> Slice:
  """The standard slice of ``chips`` chips (a power of two from the smallest slice's size)."""
  sl = smallest_slice(chip)
  if chip.dims == 2 and chips > 1:
    sl = Slice(chip, (2, 2))
  while sl.chips < chips:
    sl = Slice(chip, _grow(sl.shape))
  if sl.chips != chips:
    sizes, s = [], smallest_slice(chip)
    while s.chips <= chip.max_chips:
      sizes.append(s.name)
      s = Slice(chip, (2, 2) if s.chips == 1 else _grow(s.shape))
    raise ValueError(f"no standard {chip.name} slice has {chips} chips; choose one of "
                     f"{', '.join(sizes)}, or give the topology, e.g. "
                     f"{chip.name}:{'4x8' if chip.dims == 2 else '4x4x12'}")
  return sl


def parse_topology(text: str) -> tuple[Chip, Slice | None]:
  """``v5p-64`` / ``v5e-16`` / ``v5p:4x4x12`` -> (chip, slice); ``v5p`` -> (chip, None), for
  the search of the smallest slice that fits."""
  m = re.fullmatch(r"(v\w+?)(?:([-:])([\dx]+))?", text.strip().lower())
  name = m and _ALIASES.get(m.group(1), m.group(1))
  if not m or name not in CHIPS:
    raise ValueError(f"--topology={text!r}: expected a TPU chip ({', '.join(CHIPS)}) with an "
                     "optional slice size, e.g. v5p-64 (v4/v5p sizes count TensorCores, two per "
                     "chip), v5e-16 (v5e/v6e sizes count chips) or v5p:4x4x12")
  chip = CHIPS[name]
  if not m.group(2):
    return chip, None
  if m.group(2) == ":":
    shape = tuple(int(d) for d in m.group(3).split("x"))
    if len(shape) != chip.dims:
      raise ValueError(f"--topology={text!r}: a {chip.name} topology has {chip.dims} "
                       f"dimensions, e.g. {smallest_slice(chip).topology_name}")
    return chip, Slice(chip, shape)
  count = int(m.group(3))
  if chip.names_count_cores and count % 2:
    raise ValueError(f"--topology={text!r}: {chip.name}-N counts TensorCores, two per chip; "
                     "N must be even (v5p-8 is 4 chips)")
  return chip, slice_of(chip, count // 2 if chip.names_count_cores else count)


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def slice_devices(sl: Slice) -> list:
  """The slice's TPU device descriptions (no TPU needed; libtpu compiles for them)."""
  if not libtpu_available():
    raise CompileError(INSTALL_HINT)
  # libtpu looks for a TPU VM's metadata; on another machine these quiet its warnings. It
  # also takes a machine-wide lock (/tmp/libtpu_lockfile) that would make a second compiling
  # process (pytest -n 2, two dry runs) fail; compiling needs no exclusive TPU.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", sl.name)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return list(topologies.get_topology_desc(platform="tpu", **sl.topology_kwargs()).devices)


# ----------------------------------------------------------------------------- compiling
class CompileError(RuntimeError):
  """The config does not compile or fit on the slice; the message names the cause and knob.
  ``too_big``: it failed for memory, so a larger slice of the same chip may fit."""

  def __init__(self, message: str, *, too_big: bool = False):
    super().__init__(message)
    self.too_big = too_big


@dataclasses.dataclass
class StepReport:
  """One compiled step on one chip: the TPU compiler's memory and cost analyses."""
  name: str
  compile_s: float
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: float           # compiled HLO, per chip (the Mosaic custom calls count 0)
  bytes_accessed: float  # compiled HLO, per chip
  kernel_flops: float    # the SSD kernels, analytic, per chip, at the padded shapes
  kernel_useful: float   # the same at the model's true head and state dims
  kernel_calls: dict     # kernel name -> (calls per step, first operand shape)
  jaxpr_flops: float = 0.0  # matmuls and convolutions of the jaxpr x loop trip counts, per chip

  @property
  def peak_bytes(self) -> int:
    """Live at once at worst: arguments, temporaries, outputs not aliased to (donated)
    arguments, and the program itself."""
    return (self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes
            + self.code_bytes)


def tpu_config(config):
  """The config with the compiled Pallas Mosaic SSD kernels (what a TPU run uses)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.model.ssd_impl, c.model.pallas_target = "pallas", "tpu"
  return c


def data_keys_of(config) -> tuple[str, ...]:
  """The text the run's batches carry: none when only class2img trains (e.g. ImageNet)."""
  weights = config.loss.task_weights
  full = tasks.trained_tasks(weights, ("caption", "vqa"))
  if tasks.trained_tasks(weights, ()) == full:
    return ()
  return ("caption", "vqa") if "vqa" in full else ("caption",)


def _sample_task(config, data_keys) -> str:
  """The task the run's periodic samples start with (``train.write_samples``)."""
  trained = tasks.trained_tasks(config.loss.task_weights, data_keys)
  for task in ("class2img", "joint") + tasks.TASKS:
    if task in trained:
      return task
  raise CompileError("the config trains no task (loss.task_weights are all 0)")


def _sample_inputs(trainer: Trainer, task: str, num: int) -> dict:
  """Abstract inputs of the task's sampler (``mdm_jax.generate``'s ``needs``)."""
  from mdm_jax import generate as gen  # pylint: disable=g-import-not-at-top
  mc = trainer.model_cfg
  rep = sharding.replicated(trainer.mesh)
  shapes = dict(labels=((num,), jnp.int32), text=((num, mc.max_text_len), jnp.int32),
                prompt_len=((num,), jnp.int32),
                images=((num, *mc.visual_shape), jnp.float32))   # clips for a clip model
  spec = gen.tasks_lib.SPECS[task]
  names = tuple(spec.needs) + (("labels",) if spec.uses_class else ())
  return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=rep) for k in dict.fromkeys(names)}


def kernel_flops(jaxpr, true_dims: tuple[int, int] | None = None,
                 chips: int = 1) -> tuple[float, float, dict, float]:
  """FLOPs of the SSD ``pallas_call``s in a step's jaxpr, each counted as often as it runs
  (times the trip counts of the scans around it; a while loop's body, whose trip count is not
  static, counts once); the compiler counts them as 0.

  Each call is counted by ``ssd_call_flops``.
  The shapes inside ``shard_map`` are one device's, so the count is per chip.

  Returns:
    (executed, useful, calls): executed at the kernel's operand shapes (head dim p padded to
    the sublane tile, state n to the TPU's 128 lanes: the MXU's work, for the roofline's time);
    useful at the
    model's true (p, n) = ``true_dims`` (for MFU); calls: kernel name -> (calls per step,
    first operand's shape); and the FLOPs of every other matmul and convolution in the jaxpr
    per chip (global shapes / ``chips``), counted like the kernels. XLA's cost analysis counts
    a loop body (the scanned layers, the sampler's steps) once; this count does not.
  """
  calls: dict = {}
  totals = [0.0, 0.0, 0.0]

  def walk(jx, times, per_chip=False):
    for eqn in jx.eqns:
      if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
        # Outside shard_map the shapes are global: the chips share the work.
        totals[2] += times * _matmul_flops(eqn) / (1 if per_chip else chips)
      if eqn.primitive.name == "pallas_call":
        name = str(eqn.params.get("name") or "?")
        shape = tuple(eqn.invars[0].aval.shape)
        n_calls, _ = calls.get(name, (0, shape))
        calls[name] = (n_calls + times, shape)
        # A kernel that declares a cost_estimate is counted by the compiler already.
        if eqn.params.get("cost_estimate") is None:
          shapes = [v.aval.shape for v in eqn.invars]
          totals[0] += times * ssd_call_flops(name, shapes)
          totals[1] += times * ssd_call_flops(name, shapes, true_dims)
        continue
      inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
      inside = per_chip or eqn.primitive.name == "shard_map"
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr, inner, inside)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub, inner, inside)

  walk(jaxpr.jaxpr, 1)
  return totals[0], totals[1], calls, totals[2]


def _matmul_flops(eqn) -> float:
  """2 x output size x contracted size of a dot_general or convolution."""
  out = math.prod(eqn.outvars[0].aval.shape)
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  if eqn.primitive.name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * out * math.prod(lhs[d] for d in contract)
  spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
  return 2.0 * out * math.prod(rhs[d] for d in spec[1:])


def ssd_call_flops(name: str, shapes, true_dims: tuple[int, int] | None = None) -> float:
  """One SSD kernel call's matmul FLOPs from its operand shapes (kernel layout of
  ``pallas_kernels.ssd.tpu``: x (b, h, p, l), dt (b, h, nc, 1, q), B (b, g, l, n)), at the
  kernel's padded (p, n) or at ``true_dims``. Per chunk, C B^T (2 q^2 n) is computed once per
  grid step, i.e. per block of a group's heads (once per group for the useful count), and per
  head its product with x (2 q^2 p) and the state's read-out and update (4 q n p); the backward
  counts twice the forward. Other kernels count 0."""
  if not name.startswith("ssd_"):
    return 0.0
  from pallas_kernels.ssd import tpu as ssd_tpu  # pylint: disable=g-import-not-at-top
  (b, h, p, _), nc, q = shapes[0], shapes[1][2], shapes[1][-1]
  g, n = shapes[3][1], shapes[3][-1]
  score_blocks = g * ((h // g) // ssd_tpu.head_block(h // g, p))
  if true_dims:
    (p, n), score_blocks = true_dims, g
  forward = b * nc * (score_blocks * 2 * q * q * n + h * (2 * q * q * p + 4 * q * n * p))
  return forward * (2 if "bwd" in name else 1)


def _classify(e: Exception, what: str, sl: Slice) -> CompileError:
  """A compiler or partitioner failure as a message naming the cause and the knob."""
  text = f"{type(e).__name__}: {e}"
  short = text if len(text) < 1500 else text[:1500] + " ..."
  if re.search(r"cannot be automatically partitioned|shard_map", text):
    cause, knob = ("a Pallas kernel is called outside a shard_map under the mesh",
                   "mdm_jax.ssm.kernel.pallas_ssd's partitioning (a bug: please report it)")
  elif re.search(r"vmem|scoped memory|Mosaic|tpu_custom_call|layout|tiling|not divisible by "
               r"\(8, 128\)", text, re.I) and "hbm" not in text.lower():
    cause, knob = ("the Mosaic SSD kernel failed to compile (VMEM, layout or tiling)",
                   "model.chunk_size (smaller chunks use less VMEM) or model.headdim / "
                   "model.d_state; or run the XLA path with --config.model.ssd_impl=xla")
  elif re.search(r"RESOURCE_EXHAUSTED|out of memory|exceeds.*memory|hbm", text, re.I):
    cause, knob = (f"the {what} does not fit in a {sl.chip.name} chip's "
                   f"{sl.chip.hbm_bytes / GiB:.0f} GiB HBM",
                   "a smaller per-chip batch (--config.batch_size, or a larger slice), "
                   "--config.model.remat=True, a larger --config.mesh.fsdp")
  elif re.search(r"shard|partition|mesh|divisible|spmd", text, re.I):
    cause, knob = ("the step does not partition over this mesh",
                   "--config.mesh.data/fsdp/tensor (their product is the slice's chips; "
                   "tensor must divide the heads and the MLP width)")
  else:
    cause, knob = "the TPU compiler failed", "see the error above"
  return CompileError(f"{what} on {sl.name} ({sl.topology_name}): {cause}. Turn: {knob}.\n"
                      f"  {short}", too_big="does not fit" in cause)


def compile_for_slice(config, sl: Slice, *, sampling: bool = True) -> list[StepReport]:
  """Compiles the config's train step (and sampling step) with the TPU compiler for ``sl``.

  Raises:
    CompileError: no libtpu, a mesh or batch the slice cannot hold, a state that alone
      exceeds the chip's HBM, a compile failure, or a step whose peak exceeds the HBM.
  """
  devices = slice_devices(sl)
  c = tpu_config(config)
  try:
    mesh = sharding.make_mesh(**dict(c.mesh), devices=devices)
  except ValueError as e:
    raise CompileError(f"mesh {dict(c.mesh)} on {sl.name} ({sl.chips} chips): {e} Turn: "
                       "--config.mesh.data/fsdp/tensor (-1 fills one axis).") from e
  batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if c.batch_size % batch_ways:
    raise CompileError(f"global batch {c.batch_size} does not split over data x fsdp = "
                       f"{batch_ways} chips of {sl.name}. Turn: --config.batch_size to a "
                       f"multiple of {batch_ways} (per-chip batch x {batch_ways}).")
  mc = model_config(c)
  keys = data_keys_of(c)
  trainer = Trainer(c, mesh, vocab_size=mc.vocab_size, num_classes=mc.num_classes,
                    data_keys=keys)
  state = trainer.abstract_state
  state_bytes = _per_chip_bytes(state)
  if state_bytes > sl.chip.hbm_bytes:
    raise CompileError(
        f"train state on {sl.name}: params, EMA and optimizer state alone need "
        f"{state_bytes / GiB:.1f} GiB per chip on mesh {dict(mesh.shape)}, more than a "
        f"{sl.chip.name} chip's {sl.chip.hbm_bytes / GiB:.0f} GiB HBM. Turn: a larger "
        f"--config.mesh.fsdp (shards the state), or a larger slice.", too_big=True)
  batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=trainer.batch_sharding),
      jax.eval_shape(lambda: trainer.dummy_batch(c.batch_size)))
  steps = [("train step", trainer.train_step, (state, batch), {})]
  if sampling:
    task = _sample_task(c, keys)
    num = c.sample.num
    given = _sample_inputs(trainer, task, num)
    variables = {"params": state["ema"], "latent_stats": state["latent_stats"]}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    steps.append((f"sampling ({task}, {num} samples, {c.sample.steps} sampler steps)",
                  trainer.sampler(task, num, tuple(given)), (variables, rng), given))
  reports = []
  for what, fn, args, kwargs in steps:
    t0 = time.time()
    try:
      with trainer.mesh_context():
        traced = fn.trace(*args, **kwargs)
        lowered = traced.lower(lowering_platforms=("tpu",))
        compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
      raise _classify(e, what, sl) from e
    reports.append(_report(what, time.time() - t0, compiled, traced.jaxpr,
                           (mc.headdim, mc.d_state), sl.chips))
    if reports[-1].peak_bytes > sl.chip.hbm_bytes:
      r = reports[-1]
      raise CompileError(
          f"{what} on {sl.name}: per-chip peak {r.peak_bytes / GiB:.2f} GiB (arguments "
          f"{r.argument_bytes / GiB:.2f}, temporaries {r.temp_bytes / GiB:.2f}) exceeds a "
          f"{sl.chip.name} chip's {sl.chip.hbm_bytes / GiB:.0f} GiB HBM. Turn: a smaller "
          "per-chip batch (--config.batch_size or a larger slice), --config.model.remat=True, "
          "a larger --config.mesh.fsdp, or a smaller --config.model.chunk_size.", too_big=True)
  return reports


def _per_chip_bytes(tree) -> int:
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def _report(what, seconds, compiled, jaxpr, true_dims, chips) -> StepReport:
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  kflops, useful, calls, matmuls = kernel_flops(jaxpr, true_dims, chips)
  return StepReport(
      what, seconds, mem.argument_size_in_bytes, mem.output_size_in_bytes,
      mem.alias_size_in_bytes, mem.temp_size_in_bytes, mem.generated_code_size_in_bytes,
      float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)), kflops, useful,
      calls, matmuls)


# ----------------------------------------------------------------------------- printing
def _size(b: float) -> str:
  return f"{b / GiB:8.2f} GiB" if b >= GiB else f"{b / 2**20:8.2f} MiB"


def roofline(r: StepReport, chip: Chip) -> tuple[float, float, str]:
  """(time per call, MFU, bound) that the roofline allows one chip: the larger of the compute
  time (matmul FLOPs + the kernels' executed FLOPs at the bf16 peak) and the memory time
  (compiled bytes at the HBM bandwidth); MFU counts the useful FLOPs (the kernels at the true
  shapes). Matmul FLOPs: the larger of the compiled count and the jaxpr's (XLA's cost analysis
  counts a loop body once: the scanned layers, the sampler's steps); the compiled bytes have
  the same undercount, so the memory time is a lower bound. An upper bound on speed: it
  ignores communication, the kernels' own HBM traffic and every inefficiency below the peaks."""
  matmuls = max(r.flops, r.jaxpr_flops)
  t_compute = (matmuls + r.kernel_flops) / chip.peak_flops
  t = max(t_compute, r.bytes_accessed / chip.hbm_bandwidth)
  mfu = (matmuls + r.kernel_useful) / chip.peak_flops / t if t else 0.0
  return t, mfu, "compute" if t_compute >= t else "HBM"


def print_report(config, sl: Slice, reports: list[StepReport]) -> None:
  chip = sl.chip
  print(f"\nTPU compiler (libtpu) for {sl.name}: {sl.chips} {chip.name} chips, topology "
        f"{sl.topology_name}, mesh {dict(config.mesh)} (-1 fills), global batch "
        f"{config.batch_size} ({config.batch_size / sl.chips:g} per chip), Pallas Mosaic SSD "
        "kernels.")
  print(f"Chip {chip.name}: {chip.hbm_bytes / GiB:.0f} GiB HBM, {chip.peak_flops / 1e12:.0f} "
        f"TFLOP/s bf16, {chip.hbm_bandwidth / 1e9:.0f} GB/s HBM (Google's published numbers).")
  for r in reports:
    print(f"\n{r.name}: compiled in {r.compile_s:.1f}s. Per chip and call:")
    for label, v in (("arguments", r.argument_bytes), ("outputs", r.output_bytes),
                     ("  of which aliased to arguments", r.alias_bytes),
                     ("temporaries", r.temp_bytes), ("generated code", r.code_bytes)):
      print(f"  {label:<34}{_size(v)}")
    print(f"  {'peak':<34}{_size(r.peak_bytes)}  = {100 * r.peak_bytes / chip.hbm_bytes:.1f}% "
          f"of {chip.hbm_bytes / GiB:.0f} GiB HBM")
    print(f"  {'FLOPs (compiled HLO)':<34}{r.flops:10.3e}   (XLA counts a loop body once)")
    print(f"  {'FLOPs (jaxpr matmuls x trips)':<34}{r.jaxpr_flops:10.3e}")
    print(f"  {'FLOPs (SSD kernels, analytic)':<34}{r.kernel_flops:10.3e} executed at the "
          f"padded shapes, {r.kernel_useful:.3e} useful; {_calls_text(r.kernel_calls)}")
    print(f"  {'bytes accessed (compiled HLO)':<34}{r.bytes_accessed:10.3e}   (loop bodies once)")
    t, mfu, bound = roofline(r, chip)
    print(f"  Roofline estimate (an upper bound on speed, not a measurement): "
          f"{t * 1e3:.3g} ms per call, {bound}-bound, MFU <= {100 * mfu:.0f}%")


def _calls_text(calls: dict) -> str:
  return ", ".join(f"{k} x{n} at {s}" for k, (n, s) in sorted(calls.items())) or "no kernels"


TABLE_HEADER = ("| config | slice | train peak / HBM per chip (GiB) | sampling peak (GiB) | "
                "compile (train + sampling) | train FLOPs per chip: matmuls + SSD kernels | "
                "roofline step, MFU |\n|---|---|---|---|---|---|---|")


def table_row(config_name: str, sl: Slice, reports: list[StepReport]) -> str:
  """One row of ``TABLE_HEADER`` (the README's table of compiled configs)."""
  train, *rest = reports
  sample_peak = f"{rest[0].peak_bytes / GiB:.2f}" if rest else "-"
  t, mfu, _ = roofline(train, sl.chip)
  return (f"| {config_name} | {sl.name} ({sl.topology_name}) | "
          f"{train.peak_bytes / GiB:.2f} / {sl.chip.hbm_bytes / GiB:.0f} | {sample_peak} | "
          f"{' + '.join(f'{r.compile_s:.0f}' for r in reports)} s | "
          f"{max(train.flops, train.jaxpr_flops):.3g} + {train.kernel_flops:.3g} | "
          f"{t * 1e3:.3g} ms, {100 * mfu:.0f}% |")


def run_topology(config, topology: str, config_name: str = "config") -> Slice:
  """``--topology``: compile for the named slice, or find the smallest fitting slice of a
  chip. Prints the report; raises CompileError (the last failure, for a search)."""
  chip, sl = parse_topology(topology)
  if sl is not None:
    reports = compile_for_slice(config, sl)
    print_report(config, sl, reports)
    print("\n" + TABLE_HEADER + "\n" + table_row(config_name, sl, reports))
    return sl
  sl, failures = smallest_slice(chip), []
  while sl.chips <= chip.max_chips:
    print(f"Trying {sl.name} ({sl.topology_name}) ...", flush=True)
    try:
      reports = compile_for_slice(config, sl)
    except CompileError as e:
      print(f"  no: {str(e).splitlines()[0]}", flush=True)
      failures.append(e)
      if not e.too_big:  # a larger slice of the same chip fails the same way
        break
    else:
      print(f"\nSmallest {chip.name} slice on which {config_name} compiles and fits: {sl.name}")
      print_report(config, sl, reports)
      print("\n" + TABLE_HEADER + "\n" + table_row(config_name, sl, reports))
      return sl
    sl = Slice(chip, (2, 2) if sl.chips == 1 else _grow(sl.shape))
  last = failures[-1] if failures else ""
  if last and not last.too_big:
    raise last
  raise CompileError(f"no {chip.name} slice up to {chip.max_chips} chips fits {config_name}; "
                     f"the last failure:\n{last}")


# ----------------------------------------------------------------------------- fake devices
def parameter_counts(mc) -> dict[str, int]:
  """``param_count.count_params`` of the model, from abstract shapes (nothing allocated): a
  clip model is initialised with a clip (1, T, H, W, C), an image model with an image."""
  from mdm_jax.models import param_count  # pylint: disable=g-import-not-at-top
  visual = jax.ShapeDtypeStruct((1, *mc.visual_shape), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, mc.max_text_len), jnp.int32)
  return param_count.count_params(MDM(mc).init, jax.random.PRNGKey(0), visual, ids)


def dry_run(config):
  """Parameter count, then an ahead-of-time compile of the full train step on a simulated
  ``--dry_run_devices`` mesh of fake CPU devices, with the compiled memory analysis."""
  from mdm_jax.models import param_count  # pylint: disable=g-import-not-at-top
  mc = model_config(config)
  counts = parameter_counts(mc)
  clip = (f", clips of {mc.frames} frames in tubelets of {mc.tubelet}" if mc.frames > 1
          else "")
  print(f"Parameters of {mc.backbone} MDM ({mc.n_layers} blocks, d_model {mc.d_model}; "
        f"{mc.n_image_tokens} visual tokens{clip}):")
  print(param_count.format_counts(counts))

  n = jax.device_count()
  mesh = sharding.make_mesh(**dict(config.mesh))
  trainer = Trainer(config, mesh, vocab_size=mc.vocab_size, num_classes=mc.num_classes)
  print(f"\nSharding on mesh {dict(mesh.shape)}: "
        f"{sharding.format_replications(trainer.replications)}")
  batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=trainer.batch_sharding),
      jax.eval_shape(lambda: trainer.dummy_batch(config.batch_size)))
  t0 = time.time()
  with trainer.mesh_context():
    compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
  print(f"\nCompiled the train step for {n} devices, mesh {dict(mesh.shape)}, global batch "
        f"{config.batch_size}, in {time.time() - t0:.0f}s.")

  state = trainer.abstract_state
  rows = {"params": _per_chip_bytes(state["params"]), "ema": _per_chip_bytes(state["ema"]),
          "optimizer state": _per_chip_bytes(state["opt_state"])}
  mem = compiled.memory_analysis()
  print("\nPer-device memory:")
  for k, v in rows.items():
    print(f"  {k:<34}{_size(v)}")
  if mem is not None:
    print(f"  {'arguments (compiled)':<34}{_size(mem.argument_size_in_bytes)}")
    print(f"  {'outputs (compiled)':<34}{_size(mem.output_size_in_bytes)}")
    print(f"  {'activations/temporaries (compiled)':<34}{_size(mem.temp_size_in_bytes)}")
    peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes
    print(f"  {'peak estimate (args + temps)':<34}{_size(peak)}")
  return counts, compiled


def mosaic_calls(hlo_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """(kernel name, shape of its first operand) of every Mosaic ``tpu_custom_call`` in a
  lowered module's text."""
  calls = []
  for line in hlo_text.splitlines():
    if "@tpu_custom_call" in line:
      name = re.search(r'kernel_name = "([^"]+)"', line)
      operands = re.search(r"\} : \(tensor<([\dx]+)x[a-z]+\d*>", line)
      calls.append((name.group(1) if name else "?",
                    tuple(int(d) for d in operands.group(1).split("x")) if operands else ()))
  return calls


def print_tpu_lowering(config) -> bool:
  """Lowers the full train step for platform TPU with the compiled Pallas (Mosaic) SSD kernels
  and the mesh shardings (no TPU needed: the kernels lower to ``tpu_custom_call``), and says so
  with each kernel's per-device input shape, or prints the error. Returns whether it lowered."""
  mc = model_config(config)
  mesh = sharding.make_mesh(**dict(config.mesh))
  t0 = time.time()
  try:
    trainer = Trainer(tpu_config(config), mesh, vocab_size=mc.vocab_size,
                      num_classes=mc.num_classes)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=trainer.batch_sharding),
        jax.eval_shape(lambda: trainer.dummy_batch(config.batch_size)))
    with trainer.mesh_context():
      lowered = trainer.train_step.trace(trainer.abstract_state, batch).lower(
          lowering_platforms=("tpu",))
    calls = mosaic_calls(lowered.as_text())
  except Exception as e:  # pylint: disable=broad-except
    print(f"\nTPU lowering of the train step with the Pallas Mosaic kernels FAILED after "
          f"{time.time() - t0:.0f}s: {type(e).__name__}: {e}")
    return False
  print(f"\nLowered the train step for TPU with the Pallas Mosaic kernels in "
        f"{time.time() - t0:.0f}s: {len(calls)} tpu_custom_calls.")
  for name, shape in sorted(set(calls)):
    print(f"  {name}: per-device x as the kernel sees it = {shape}")
  return True


def main(config, *, topology: str | None, devices: int, config_name: str = "config") -> int:
  """The dry run's entry point (``train --dry_run``): returns the process exit status."""
  if topology == "home":
    topology = config.get("topology")
    if not topology:
      print("--topology=home: the config names no slice; set --config.topology=v5p-64 (or "
            "pass --topology=v5p-64)")
      return 1
  if topology:
    os.environ["JAX_PLATFORMS"] = "cpu"  # tracing on the host; libtpu compiles for the slice
    try:
      run_topology(config, topology, config_name)
    except (CompileError, ValueError) as e:
      print(f"\nDry run for --topology={topology} FAILED: {e}", flush=True)
      return 1
    return 0
  # Fake CPU devices stand in for the pod; must be set before JAX starts its backends.
  os.environ["JAX_PLATFORMS"] = "cpu"
  flag = f"--xla_force_host_platform_device_count={devices}"
  os.environ["XLA_FLAGS"] = " ".join(
      [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f] + [flag])
  dry_run(config)
  return 0 if print_tpu_lowering(config) else 1
