"""Device mesh, logical-axis rules and sharded initialisation (MaxText style).

Model code names array dimensions with *logical* axes only, weights and activations apart:

  kernel = self.param("kernel", nn.with_logical_partitioning(init, ("embed", "mlp")),
                      (d_model, d_inner))
  x = nn.with_logical_constraint(x, ("activation_batch", "activation_length",
                                     "activation_embed"))

and a table of rules maps logical axes onto the mesh axes ("data", "fsdp", "tensor"):
``DEFAULT_LOGICAL_AXIS_RULES`` below, which a config's ``sharding.logical_axis_rules`` starts from
and may override (every function here takes the table as ``rules``):

  * "data"   - pure data parallelism: the batch is split, parameters replicated.
  * "fsdp"   - fully-sharded data parallelism (ZeRO-3): the batch is split *and*
               parameters / optimiser state are split along their "embed" dim.
  * "tensor" - tensor (model) parallelism over the mlp / heads / vocab dims.

A dimension that the mesh axes do not divide (or a parameter too small to split) is
replicated along that dimension instead of failing, so tiny configurations run on any mesh
unchanged. It is not silent: ``param_shardings`` (and ``abstract_sharded``) can report every
such dimension as a ``Replication`` with the bytes it costs each device, the ``Trainer`` logs
the list once and refuses one above ``sharding.max_replicated_bytes`` (at 7B a replicated
``embed`` or ``mlp`` dimension is an out-of-memory on the pod, not a convenience).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

try:  # jax >= 0.5: mesh axes carry a type; older versions have no AxisType.
  from jax.sharding import AxisType
except ImportError:  # pragma: no cover - depends on the installed jax.
  AxisType = None

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, Any]]   # (logical name, mesh axes or None) pairs
PyTree = Any

# The model's logical axis names onto the mesh axes, MaxText's ``logical_axis_rules``. Weights
# and activations have separate names, so that FSDP can split a weight's ``embed`` dimension
# while activations stay split over the batch only. Flax assigns rules top-down and never uses
# a mesh axis twice in one array. A config's ``sharding.logical_axis_rules`` starts from this.
DEFAULT_LOGICAL_AXIS_RULES = (
    # Activations: the batch split over every data-parallel axis, features over tensor.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    # Weights: FSDP splits d_model, tensor parallelism the wide dimensions.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("state", None),
    ("conv", None),
    ("layers", None),
    ("latent", None),
    ("patch", None),
)

# Bytes per device that one dimension left unsplit (its rule dropped or shortened because the
# mesh axes do not divide it) may cost before the Trainer refuses the run; a config's
# ``sharding.max_replicated_bytes`` overrides it (None: no limit). Tiny models on any mesh stay
# far below it; one layer-stacked 7B weight replicated over fsdp is gigabytes above it.
DEFAULT_MAX_REPLICATED_BYTES = 64 * 2**20


def as_rules(table: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """A config's ``sharding.logical_axis_rules`` (tuples, or lists when read back from a saved
  config.json) as the tuple of (logical name, mesh axes) pairs that flax reads.

  Raises:
    ValueError: naming the entry, for one that is not a (name, mesh axes) pair or that names
      a mesh axis outside ("data", "fsdp", "tensor").
  """
  rules = []
  for entry in table:
    if len(entry) != 2 or not isinstance(entry[0], str):
      raise ValueError(f"sharding.logical_axis_rules: {entry!r} is not a (logical name, mesh "
                       "axes) pair; write e.g. ('embed', 'fsdp') or ('activation_length', None)")
    name, axes = entry
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    unknown = [a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a not in MESH_AXES]
    if unknown:
      raise ValueError(f"sharding.logical_axis_rules: {name!r} maps to mesh axes {unknown} that "
                       f"the mesh does not have; use those of {MESH_AXES} (or None)")
    rules.append((name, axes))
  return tuple(rules)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a ("data", "fsdp", "tensor") mesh with Auto (GSPMD) axis types.

  Args:
    data: size of the data-parallel axis; -1 fills it with the remaining devices.
    fsdp: size of the FSDP axis (-1 allowed if `data` is not -1).
    tensor: size of the tensor-parallel axis (-1 allowed likewise).
    devices: devices to use; defaults to `jax.devices()` (all hosts).

  Returns:
    A `jax.sharding.Mesh` of shape (data, fsdp, tensor).

  Raises:
    ValueError: if the sizes are invalid or their product differs from the number
      of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, size in sizes.items():
    if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(
          f"make_mesh: {name}={size!r} must be a positive int or -1 (fill).")
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(
        f"make_mesh: only one axis may be -1, got {fill}; give explicit sizes.")
  if fill:
    known = math.prod(s for s in sizes.values() if s != -1)
    if n % known:
      raise ValueError(
          f"make_mesh: cannot fill axis {fill[0]!r}: {n} devices are not divisible"
          f" by the other axes' product {known} ({sizes}).")
    sizes[fill[0]] = n // known
  shape = tuple(int(sizes[a]) for a in MESH_AXES)
  if math.prod(shape) != n:
    raise ValueError(
        f"make_mesh: data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} ="
        f" {math.prod(shape)} devices, but {n} are available; choose sizes whose"
        " product is the device count (or set one of them to -1).")
  kwargs = {}
  if AxisType is not None:
    # jax.make_mesh defaults to Explicit axes, under which an FSDP step fails with
    # ShardingTypeError; Auto keeps GSPMD propagation.
    kwargs["axis_types"] = (AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, devices=devices, **kwargs)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules) -> Iterator[Mesh]:
  """Makes `mesh` and the logical rules current (for `nn.with_logical_constraint`).

  Uses `jax.set_mesh` (the successor of the deprecated `with mesh:`), falling back
  to `jax.sharding.use_mesh` or the legacy form on older jax.
  """
  if hasattr(jax, "set_mesh"):
    mesh_cm = jax.set_mesh(mesh)
  elif hasattr(jax.sharding, "use_mesh"):  # pragma: no cover - older jax.
    mesh_cm = jax.sharding.use_mesh(mesh)
  else:  # pragma: no cover - older jax.
    mesh_cm = mesh
  with mesh_cm, nn.logical_axis_rules(tuple(rules)):
    yield mesh


def _check_names(names: Sequence[str | None], rules) -> None:
  known = {name for name, _ in rules}
  unknown = [n for n in names if isinstance(n, str) and n not in known]
  if unknown:
    raise ValueError(
        f"Unknown logical axis name(s) {unknown} in {tuple(names)}; known names are"
        f" {sorted(known)}. Fix the name or add a rule to the config's"
        " sharding.logical_axis_rules (the defaults: mdm_jax.training.sharding."
        "DEFAULT_LOGICAL_AXIS_RULES).")


@dataclasses.dataclass(frozen=True)
class Replication:
  """One dimension of one array that its rule asked to split but the mesh could not.

  ``replicated_bytes`` is what this dimension costs each device beyond its rule:
  ``itemsize * prod_{i != dim} ceil(shape[i] / split[i]) * (ceil(shape[dim] / kept) -
  ceil(shape[dim] / wanted))``, with the other dimensions split as they are (``split``),
  ``kept`` the product of the mesh axes the dimension is still split over and ``wanted`` that
  of the axes its rule names.
  """
  name: str                   # the array's path in the tree, e.g. "['params']['w']['kernel']"
  shape: tuple[int, ...]
  dtype: str
  dim: int                    # which dimension of ``shape``
  logical: str | None         # its logical axis name (None for an ``nn.Partitioned`` leaf)
  wanted: tuple[str, ...]     # the mesh axes its rule maps it to (those the mesh has)
  kept: tuple[str, ...]       # the mesh axes it is split over: a prefix of ``wanted``
  mesh_shape: tuple[tuple[str, int], ...]
  replicated_bytes: int

  def describe(self) -> str:
    sizes = dict(self.mesh_shape)
    dropped = self.wanted[len(self.kept):]
    rule = f"{self.logical!r} -> {self.wanted}" if self.logical else f"{self.wanted}"
    return (f"{self.name} {self.shape} {self.dtype}: dimension {self.dim} (rule {rule}, size "
            f"{self.shape[self.dim]}) not split over {dropped} "
            f"({math.prod(sizes[a] for a in self.wanted)} shards do not divide it; kept "
            f"{self.kept or 'none'}): {self.replicated_bytes:,} bytes per device replicated")


def _fit_axes(spec: Sequence[Any], shape: Sequence[int], mesh: Mesh):
  """(wanted, kept) mesh axes per dimension: `spec`'s axes that `mesh` has, and the longest
  prefix of them whose size product divides the dimension (("data", "fsdp") may become
  ("data",), or nothing)."""
  fitted = []
  for dim, axes in zip(shape, spec):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    wanted = tuple(a for a in axes if a in mesh.shape)
    kept = wanted
    while kept and dim % math.prod(mesh.shape[a] for a in kept):
      kept = kept[:-1]
    fitted.append((wanted, kept))
  return fitted


def _as_spec(fitted) -> P:
  return P(*(None if not kept else kept[0] if len(kept) == 1 else kept for _, kept in fitted))


def _fit_spec(spec: Sequence[Any], shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes that are absent from `mesh` or do not divide their dimension.

  For a dimension mapped to several mesh axes, the longest prefix of them whose
  size product divides the dimension is kept (("data", "fsdp") may become ("data",)).
  """
  return _as_spec(_fit_axes(spec, shape, mesh))


def _replications(name: str, logical: Sequence[Any] | None, shape: Sequence[int], dtype,
                  fitted, mesh: Mesh) -> list[Replication]:
  """A `Replication` for every dimension of `fitted` whose kept axes are fewer than wanted."""
  sizes = dict(mesh.shape)
  split = lambda axes: math.prod(sizes[a] for a in axes)
  per_dim = [-(-d // split(kept)) for d, (_, kept) in zip(shape, fitted)]
  itemsize = np.dtype(dtype).itemsize
  found = []
  for i, (d, (wanted, kept)) in enumerate(zip(shape, fitted)):
    if kept == wanted:
      continue
    others = math.prod(per_dim[:i] + per_dim[i + 1:])
    extra = itemsize * others * (-(-d // split(kept)) - -(-d // split(wanted)))
    found.append(Replication(
        name=name, shape=tuple(int(x) for x in shape), dtype=np.dtype(dtype).name, dim=i,
        logical=None if logical is None else logical[i], wanted=wanted, kept=kept,
        mesh_shape=tuple(sizes.items()), replicated_bytes=int(extra)))
  return found


def logical_sharding(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules,
) -> NamedSharding:
  """NamedSharding for an array of `shape` whose dims have logical `names`.

  Dims that the mapped mesh axes do not divide are replicated (``param_shardings`` reports
  them).
  """
  return NamedSharding(mesh, _as_spec(_logical_fit(names, shape, mesh, rules)))


def _logical_fit(names, shape, mesh, rules):
  if len(names) != len(shape):
    raise ValueError(
        f"Logical names {tuple(names)} have {len(names)} entries but the array has"
        f" shape {tuple(shape)}; give one name (or None) per dimension.")
  _check_names(names, rules)
  spec = nn.logical_to_mesh_axes(tuple(names), tuple(rules))
  return _fit_axes(tuple(spec), shape, mesh)


def unbox(tree: PyTree) -> PyTree:
  """Strips flax partitioning boxes (`nn.LogicallyPartitioned`) from a pytree."""
  return meta.unbox(tree)


def param_shardings(
    abstract_variables: PyTree,
    mesh: Mesh,
    rules: Rules,
    report: list[Replication] | None = None,
) -> PyTree:
  """NamedShardings for a (boxed) variable or train-state pytree.

  Args:
    abstract_variables: pytree whose leaves are arrays / ShapeDtypeStructs, possibly
      wrapped in `nn.LogicallyPartitioned` (from `nn.with_logical_partitioning`) or
      `nn.Partitioned` boxes, e.g. `jax.eval_shape(model.init, ...)`. Optimiser
      states built from boxed params (`tx.init(boxed_params)`) carry the boxes too.
    mesh: the device mesh.
    rules: logical -> mesh axis rules.
    report: if given, a `Replication` is appended to it for every dimension whose rule was
      dropped or shortened because the mesh axes do not divide it.

  Returns:
    A pytree with the structure of `unbox(abstract_variables)` holding a
    NamedSharding per leaf: logical boxes map through `rules`, `nn.Partitioned`
    names are used as mesh axes directly, unboxed leaves are replicated.
  """
  replicated = NamedSharding(mesh, P())

  def leaf_sharding(path, leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      shape, logical = np.shape(leaf.value), tuple(leaf.names)
      fitted = _logical_fit(leaf.names, shape, mesh, rules)
    elif isinstance(leaf, nn.Partitioned):
      shape, logical = np.shape(leaf.value), None
      if len(leaf.names) != len(shape):
        raise ValueError(
            f"Partitioned names {leaf.names} do not match shape {shape}.")
      fitted = _fit_axes(leaf.names, shape, mesh)
    else:
      return replicated
    if report is not None:
      report.extend(_replications(jax.tree_util.keystr(path), logical, shape,
                                  leaf.value.dtype, fitted, mesh))
    return NamedSharding(mesh, _as_spec(fitted))

  return jax.tree_util.tree_map_with_path(
      leaf_sharding, abstract_variables,
      is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def format_replications(replications: Sequence[Replication]) -> str:
  """One line per replicated dimension, largest first, and the total per device."""
  if not replications:
    return "every sharding rule applied in full: no dimension replicated against its rule"
  ordered = sorted(replications, key=lambda r: -r.replicated_bytes)
  total = sum(r.replicated_bytes for r in ordered)
  return "\n".join(
      [f"{len(ordered)} dimension(s) replicated against their sharding rule (the mesh axes do "
       f"not divide them), {total:,} bytes per device in all:"]
      + [f"  {r.describe()}" for r in ordered])


def check_replications(replications: Sequence[Replication], max_bytes: int | None) -> None:
  """Refuses a dimension replicated against its rule that costs more than `max_bytes`.

  Raises:
    ValueError: naming the largest such array, its rule and the fixes.
  """
  if max_bytes is None:
    return
  over = [r for r in replications if r.replicated_bytes > max_bytes]
  if not over:
    return
  r = max(over, key=lambda r: r.replicated_bytes)
  sizes = dict(r.mesh_shape)
  shards = math.prod(sizes[a] for a in r.wanted)
  rule = f"({r.logical!r}, {r.wanted})" if r.logical else f"the names {r.wanted}"
  raise ValueError(
      f"{r.describe()}, more than sharding.max_replicated_bytes={max_bytes:,}"
      f" ({len(over)} dimension(s) over it). Fix: make that dimension a multiple of {shards}"
      f" (the model config), choose a mesh whose {r.wanted} sizes divide "
      f"{r.shape[r.dim]}, map the rule {rule} to other mesh axes in "
      "sharding.logical_axis_rules, or raise sharding.max_replicated_bytes (None: no limit).")


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of `mesh` (readable on every process)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Sharding of a batch: leading dim split over the "activation_batch" rule's mesh axes."""
  spec = nn.logical_to_mesh_axes(("activation_batch",), tuple(rules))
  return NamedSharding(mesh, spec)


def shard_batch(
    batch: Mapping[str, Any] | PyTree,
    mesh: Mesh,
    rules: Rules,
) -> PyTree:
  """Turns this host's numpy batch into global, batch-sharded jax.Arrays.

  Each process passes its own slice (leading dim = per-host batch); the global
  batch is the concatenation over processes in process order
  (`jax.make_array_from_process_local_data`), so this works on one host and on a pod.

  Args:
    batch: pytree of numpy arrays, each of shape (local_batch, ...).
    mesh: the device mesh.
    rules: logical rules (for the "activation_batch" axis).

  Returns:
    The same pytree of jax.Arrays of shape (local_batch * process_count, ...).
  """
  sharding = batch_sharding(mesh, rules)
  batch_axes = sharding.spec[0]
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else (batch_axes or ())
  n_shards = math.prod(mesh.shape[a] for a in batch_axes)

  def put(path, x):
    x = np.asarray(x)
    if x.ndim == 0:
      raise ValueError(
          f"shard_batch: leaf {jax.tree_util.keystr(path)} is a scalar; every"
          " batch leaf needs a leading batch dimension.")
    global_batch = x.shape[0] * jax.process_count()
    if global_batch % n_shards:
      raise ValueError(
          f"shard_batch: leaf {jax.tree_util.keystr(path)} has global batch"
          f" {global_batch} ({x.shape[0]} per host x {jax.process_count()} hosts),"
          f" not divisible by the {n_shards} batch shards of mesh axes"
          f" {batch_axes}; use a batch size that is a multiple of {n_shards}.")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(put, batch)


def abstract_sharded(
    init_fn: Callable[..., PyTree],
    rng: jax.Array,
    mesh: Mesh,
    *args: Any,
    rules: Rules,
    report: list[Replication] | None = None,
) -> PyTree:
  """Shapes, dtypes and shardings of `unbox(init_fn(rng, *args))`, computing nothing.

  The result (ShapeDtypeStructs with `.sharding`) is the restore target for a
  checkpoint and gives the train step's in/out shardings. `report`: as in `param_shardings`.
  """
  with mesh_context(mesh, rules):
    boxed = jax.eval_shape(init_fn, rng, *args)
  shardings = param_shardings(boxed, mesh, rules, report)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      unbox(boxed), shardings)


def init_sharded(
    init_fn: Callable[..., PyTree],
    rng: jax.Array,
    mesh: Mesh,
    *args: Any,
    rules: Rules,
) -> PyTree:
  """Runs `init_fn(rng, *args)` under jit so every leaf is created already sharded.

  Nothing is materialised on a single device first, so models larger than one
  device's memory can be initialised.

  Args:
    init_fn: returns a pytree (params, or a whole train state built from boxed
      params, e.g. {"params": p, "opt_state": tx.init(p), ...}) whose leaves may be
      `nn.LogicallyPartitioned` boxes.
    rng: PRNG key passed as the first argument.
    mesh: the device mesh.
    *args: further (array) arguments to `init_fn`, e.g. dummy inputs.
    rules: logical -> mesh axis rules.

  Returns:
    `unbox(init_fn(rng, *args))` with leaves sharded per `param_shardings`; read
    the shardings back with `jax.tree.map(lambda a: a.sharding, result)`.
  """
  abstract = abstract_sharded(init_fn, rng, mesh, *args, rules=rules)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  with mesh_context(mesh, rules):
    return jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)(
        rng, *args)
