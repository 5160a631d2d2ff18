"""The Pallas SSD kernel as an implementation of ``mdm_jax.ssm.ssd``: which kernel runs and its
partitioning under the device mesh (the start-up check against ``"xla"`` is
``mdm_jax.ssm.kernel_check``).

Targets (``pallas_target``, the model config's field of that name):
  * ``"auto"``: the kernel for ``jax.default_backend()``: Mosaic on TPU, Triton on GPU, the
    Mosaic kernel in interpret mode on CPU.
  * ``"tpu"``: the compiled Mosaic kernel whatever the default backend, e.g. to lower a train
    step for TPU on a CPU host (the kernel lowers to a ``tpu_custom_call`` without a TPU).
  * ``"gpu"``: the compiled Triton kernel.
  * ``"interpret"``: the Mosaic kernel in interpret mode (any backend; slow, for tests).

Partitioning: a ``pallas_call`` is one custom call that XLA cannot split, so under a mesh it
would gather every operand onto every device (or fail to partition). ``pallas_ssd`` runs the
kernel inside ``jax.shard_map`` over the mesh of the current context (``jax.set_mesh``, as
``mdm_jax.training.sharding.mesh_context`` sets it): the batch is split over the mesh axes of
the logical axis ``"activation_batch"`` and the heads over those of ``"activation_heads"`` (the
current flax logical rules, i.e. the config's ``sharding.logical_axis_rules``: (data, fsdp) and
tensor; without rules nothing is split). The scan couples neither
batch rows nor heads, so the shards need no communication. A dimension that its mesh axes do not
divide keeps the longest prefix of them that does (or none: replicated), as parameters do.

Groups: head ``i`` reads group ``i // (h // g)``. When the head shards split the groups evenly
(``g`` a multiple of the head shard count) B and C are split over the same axes and each shard
keeps the global head-to-group map. Otherwise B and C are replicated over the head axes and each
shard takes the groups of its own heads (``lax.axis_index``): one group when all its heads share
it, else one group per head. Without a mesh, or on one device, the kernel is called directly;
under a mesh whose axes divide neither the batch nor the heads (e.g. 10 samples on 4 chips) it
still runs inside the ``shard_map``, replicated (each device the whole call): Mosaic kernels
cannot be partitioned automatically, and the TPU compiler refuses a bare call under a mesh.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mdm_jax.ssm.contract import check_shapes

PALLAS_TARGETS = ("auto", "tpu", "gpu", "interpret")
_KERNEL_OPTIONS = {"auto": dict(lowering=None, interpret=None),
                   "tpu": dict(lowering="tpu", interpret=False),
                   "gpu": dict(lowering="gpu", interpret=False),
                   "interpret": dict(lowering="tpu", interpret=True)}


def kernel_options(target: str) -> dict:
  """``pallas_kernels.ssd.ssd``'s ``lowering`` and ``interpret`` for a target (see above)."""
  if target not in _KERNEL_OPTIONS:
    raise ValueError(f"ssd: unknown pallas_target {target!r}; choose one of {PALLAS_TARGETS}")
  return dict(_KERNEL_OPTIONS[target])


def kernel_call(x, dt, A, B, C, initial_state, *, chunk_size, target):
  """The kernel itself, unpartitioned (shapes as ``pallas_ssd``)."""
  from pallas_kernels import ssd as pallas_ssd  # Imported lazily: only the kernel path needs it.
  return pallas_ssd.ssd(x, dt, A, B, C, chunk_size=chunk_size, initial_state=initial_state,
                        **kernel_options(target))


# The logical axes whose mesh axes split the kernel's batch and heads.
BATCH_AXIS, HEAD_AXIS = "activation_batch", "activation_heads"


def _axes_of(logical: str, rules) -> tuple[str, ...]:
  axes = nn.logical_to_mesh_axes((logical,), tuple(rules))[0]
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def _fit(dim: int, axes: tuple[str, ...], sizes: dict) -> tuple[str, ...]:
  """The longest prefix of ``axes`` (those in the mesh, of size > 1) whose sizes divide dim."""
  axes = tuple(a for a in axes if sizes.get(a, 1) > 1)
  while axes and dim % math.prod(sizes[a] for a in axes):
    axes = axes[:-1]
  return axes


def _spec_entry(axes):
  return None if not axes else axes[0] if len(axes) == 1 else axes


def pallas_ssd(x, dt, A, B, C, initial_state: Optional[jax.Array] = None, *, chunk_size: int,
               target: str = "auto"):
  """The Pallas SSD kernel, partitioned over the current mesh (module docstring).

  Shapes as ``mdm_jax.ssm.ssd``: x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, g, n),
  initial_state (b, h, p, n) or None -> y (b, l, h, p) in x.dtype, h_last (b, h, p, n) f32.
  """
  b, _, h, _, g, _ = check_shapes(x, dt, A, B, C, initial_state)
  kernel = functools.partial(kernel_call, chunk_size=chunk_size, target=target)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(x, dt, A, B, C, initial_state)
  # Axes already manual (inside an enclosing shard_map) are not ours to split.
  sizes = {a: s for a, s in mesh.shape.items() if a not in mesh.manual_axes}
  rules = nn.get_logical_axis_rules()
  batch_axes = _fit(b, _axes_of(BATCH_AXIS, rules), sizes)
  head_axes = _fit(h, tuple(a for a in _axes_of(HEAD_AXIS, rules) if a not in batch_axes), sizes)
  if not batch_axes and not head_axes and all(s == 1 for s in sizes.values()):
    return kernel(x, dt, A, B, C, initial_state)

  shards = math.prod(sizes[a] for a in head_axes)  # head shards
  local_heads, heads_per_group = h // shards, h // g
  split_groups = g % shards == 0
  bs, hs = _spec_entry(batch_axes), _spec_entry(head_axes)
  gs = hs if split_groups else None

  def local_groups(v):
    """(b, l, g, n) replicated over the head axes -> the groups of this shard's heads."""
    first = jax.lax.axis_index(head_axes) * local_heads  # this shard's first global head
    if heads_per_group % local_heads == 0:  # all its heads read one group
      return jax.lax.dynamic_slice_in_dim(v, first // heads_per_group, 1, axis=2)
    return jnp.take(v, (first + jnp.arange(local_heads)) // heads_per_group, axis=2)

  def body(x, dt, A, B, C, *h0):
    if not split_groups and shards > 1:
      B, C = local_groups(B), local_groups(C)
    return kernel(x, dt, A, B, C, h0[0] if h0 else None)

  args = [x, dt, A, B, C]
  in_specs = [P(bs, None, hs, None), P(bs, None, hs), P(hs), P(bs, None, gs, None),
              P(bs, None, gs, None)]
  if initial_state is not None:
    args.append(initial_state)
    in_specs.append(P(bs, hs, None, None))
  # check_vma=False: the kernels' out_shapes carry no varying-axes annotation. The transpose
  # then psums the cotangents of inputs over the axes their spec leaves out (B and C over the
  # head axes when replicated) and divides output cotangents over those the outputs leave out,
  # which is exact here: a replicated output is computed identically on each of those devices.
  return jax.shard_map(body, mesh=mesh, in_specs=tuple(in_specs),
                       out_specs=(P(bs, None, hs, None), P(bs, hs, None, None)),
                       check_vma=False)(*args)
