"""The TPU compiler's verdict, from this CPU machine (``experiments.compile_report``): libtpu
compiles for descriptions of TPU slices, Mosaic kernels included.

Without libtpu these tests skip, saying so; the pinned CI suite installs it (``.ci/run``,
``.[test,tpu]``) and sets MDM_REQUIRE_LIBTPU=1, under which a missing libtpu fails instead.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import compile_report as cr
from experiments import configs

if not cr.libtpu_available():
  if os.environ.get("MDM_REQUIRE_LIBTPU"):
    raise RuntimeError("MDM_REQUIRE_LIBTPU is set but libtpu is not installed: "
                       "pip install -c constraints.txt -e '.[test,tpu]'")
  pytest.skip("libtpu is not installed (pip install 'mdm-jax[tpu]'): no TPU compiler",
              allow_module_level=True)


@pytest.mark.parametrize("name, chips, topology", [
    # Google Cloud's tables: v5p/v4 names count TensorCores (2 per chip), v5e/v6e count chips.
    ("v5p-8", 4, "v5p:2x2x1"), ("v5p-64", 32, "v5p:2x4x4"), ("v5p-128", 64, "v5p:4x4x4"),
    ("v5p-1024", 512, "v5p:8x8x8"), ("v4-32", 16, "v4:2x2x4"), ("v5e-1", 1, "v5e:1x1"),
    ("v5e-8", 8, "v5e:2x4"), ("v5e-256", 256, "v5e:16x16"), ("v6e-16", 16, "v6e:4x4"),
    ("v5litepod-4", 4, "v5e:2x2"), ("v5p:4x4x12", 192, "v5p:4x4x12"),
])
def test_slice_names(name, chips, topology):
  _, sl = cr.parse_topology(name)
  assert (sl.chips, sl.topology_name) == (chips, topology)
  if chips <= 64:  # libtpu's own description of the slice has one device per chip
    assert len(cr.slice_devices(sl)) == chips


@pytest.mark.parametrize("name, message", [
    ("v5e-2", "no standard v5e slice has 2 chips"), ("v5p-7", "counts TensorCores"),
    ("v5p:4x4", "3 dimensions"), ("h100-8", "expected a TPU chip"),
])
def test_bad_slice_names(name, message):
  with pytest.raises(ValueError, match=message):
    cr.parse_topology(name)


def _forward_flops(b, h, g, q, p, n):
  """Hand count of one single-chunk SSD forward call whose group's heads share one grid step:
  C B^T once per group (2 q^2 n), and per head its product with x (2 q^2 p) and the state's
  read-out and update (4 q n p)."""
  return b * (g * 2 * q * q * n + h * (2 * q * q * p + 4 * q * n * p))


def test_tiny_train_and_sampling_compile_on_a_3d_mesh():
  """tiny's train and sampling steps, Mosaic kernels included, on data 2 x fsdp 2 x tensor 2
  of a v5e-8: each kernel call sees one chip's batch rows and heads (train: 16 / 4 rows,
  4 heads / 2)."""
  config = configs.load("tiny")
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))
  _, sl = cr.parse_topology("v5e-8")
  train, sample = cr.compile_for_slice(config, sl)
  mc = cr.model_config(config)
  heads = mc.d_model * mc.expand // mc.headdim
  assert {k: (n, s[:2]) for k, (n, s) in train.kernel_calls.items()} == {
      "ssd_fwd_tpu": (mc.n_layers, (4, heads // 2)), "ssd_bwd_tpu": (mc.n_layers, (4, heads // 2))}
  b, h, p, q = train.kernel_calls["ssd_fwd_tpu"][1]  # x transposed: (b, h, p, l)
  # tiny's sequence is shorter than one 128-step chunk: the chunk is the whole (sublane-padded)
  # length; one group, whose heads (h * p <= 512 rows) run in one grid step.
  assert q < 128 and q % 8 == 0 and mc.ngroups == 1 and h * p <= 512
  assert p == mc.headdim  # the head dim is not padded (16 is a whole f32 sublane tile)
  fwd = _forward_flops(b, h, 1, q, p, 128)  # d_state pads to 128 lanes
  assert train.kernel_flops == mc.n_layers * 3 * fwd  # backward = 2 x forward
  assert train.kernel_useful == mc.n_layers * 3 * _forward_flops(b, h, 1, q, mc.headdim,
                                                                 mc.d_state)
  # 10 samples: data x fsdp = 4 does not divide them, data = 2 does (5 rows a chip).
  assert sample.kernel_calls["ssd_fwd_tpu"][1][:2] == (config.sample.num // 2, heads // 2)
  for r in (train, sample):
    assert 0 < r.peak_bytes < sl.chip.hbm_bytes and r.flops > 0 and r.bytes_accessed > 0
  # The compiled arguments hold at least one chip's shard of the train state.
  trainer_state = cr.Trainer(cr.tpu_config(config), cr.sharding.make_mesh(
      2, 2, 2, devices=cr.slice_devices(sl)), vocab_size=mc.vocab_size,
      num_classes=mc.num_classes, data_keys=cr.data_keys_of(config)).abstract_state
  assert train.argument_bytes >= cr._per_chip_bytes(trainer_state)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernel_forward_backward_at_imagenet256_shapes(dtype):
  """The public Pallas SSD op, forward and backward, at one v5p chip's share of imagenet256
  (batch 256 on 64 chips: 4 rows; 1192 tokens; 2 x 2048 / 64 = 64 heads of 64; 8 groups of
  state 128; chunk 128), compiled by Mosaic for a v5p chip."""
  from pallas_kernels.ssd import ssd
  config = configs.load("imagenet256")
  mc = cr.model_config(config)
  b, l, h, p, g, n = 4, 1192, mc.d_model * mc.expand // mc.headdim, mc.headdim, mc.ngroups, \
      mc.d_state
  _, sl = cr.parse_topology("v5p-8")
  device = cr.slice_devices(sl)[0]
  one = jax.sharding.SingleDeviceSharding(device)
  spec = lambda shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt, sharding=one)

  def loss(x, dt, A, B, C):
    y, h_last = ssd(x, dt, A, B, C, chunk_size=mc.chunk_size, lowering="tpu", interpret=False)
    return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h_last)

  args = (spec((b, l, h, p)), spec((b, l, h), jnp.float32), spec((h,), jnp.float32),
          spec((b, l, g, n)), spec((b, l, g, n)))
  traced = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))).trace(*args)
  compiled = traced.lower(lowering_platforms=("tpu",)).compile()
  _, grads = compiled.out_info
  assert [(x.shape, x.dtype) for x in grads] == [(a.shape, a.dtype) for a in args]
  _, _, calls, _ = cr.kernel_flops(traced.jaxpr)
  assert {k: n for k, (n, _) in calls.items()} == {"ssd_fwd_tpu": 1, "ssd_bwd_tpu": 1}
  mem = compiled.memory_analysis()
  assert 0 < mem.temp_size_in_bytes < sl.chip.hbm_bytes


def test_config_that_cannot_fit_is_refused(capsys):
  """imagenet256's 7B train state on one 16 GiB v5e chip: refused before compiling, with the
  per-chip size and the knob (fsdp, a larger slice)."""
  config = configs.load("imagenet256")
  assert cr.main(config, topology="v5e-1", devices=1, config_name="imagenet256") == 1
  out = capsys.readouterr().out
  assert "FAILED" in out and "more than a v5e chip's 16 GiB HBM" in out, out
  assert "--config.mesh.fsdp" in out and "larger slice" in out
  state_gib = float(out.split("alone need ")[1].split(" GiB")[0])
  # Independent count: 4 float32 copies of every parameter (params, EMA, Adam's two moments).
  n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(cr.Trainer(
      config, cr.sharding.make_mesh(devices=jax.devices()[:1]), vocab_size=32000,
      num_classes=1000, data_keys=()).abstract_state["params"]))
  assert abs(state_gib - 16 * n_params / 2**30) < 0.05 * state_gib


def test_compiler_out_of_memory_names_the_knob():
  """The TPU compiler's own verdict: the SSD op at 512 rows of imagenet256's per-chip shapes
  (x alone 10 GiB in f32, padded to 128 lanes twice that) does not fit a v5e chip; the error
  becomes a message naming the per-chip batch."""
  from pallas_kernels.ssd import ssd
  _, sl = cr.parse_topology("v5e-1")
  one = jax.sharding.SingleDeviceSharding(cr.slice_devices(sl)[0])
  spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=one)
  b, l, h, p, g, n = 512, 1192, 64, 64, 8, 128
  f = lambda *a: ssd(*a, chunk_size=128, lowering="tpu", interpret=False)[0]
  with pytest.raises(Exception, match="RESOURCE_EXHAUSTED") as info:
    jax.jit(f).trace(spec((b, l, h, p)), spec((b, l, h)), spec((h,)), spec((b, l, g, n)),
                     spec((b, l, g, n))).lower(lowering_platforms=("tpu",)).compile()
  message = str(cr._classify(info.value, "the SSD kernel", sl))
  assert "does not fit in a v5e chip's 16 GiB HBM" in message, message
  assert "per-chip batch" in message and "remat" in message


def test_batch_that_does_not_split_is_refused():
  config = configs.load("tiny")
  config.batch_size = 6
  _, sl = cr.parse_topology("v5e-4")
  with pytest.raises(cr.CompileError, match=r"global batch 6 does not split over data x fsdp = "
                     r"4 chips of v5e-4. Turn: --config.batch_size to a multiple of 4"):
    cr.compile_for_slice(config, sl)


def test_chip_alone_finds_the_smallest_slice_that_fits(monkeypatch, capsys):
  """``--topology=v5p``: doubling from v5p-8 until the config fits; a failure that a larger
  slice cannot mend (not memory) stops the search with its own message. The compile is
  replaced by a rule (fits from 32 chips on) to test the search alone."""
  tried = []

  def compile_rule(config, sl, sampling=True):
    tried.append(sl.name)
    if sl.chips < 32:
      raise cr.CompileError(f"{sl.name} too small", too_big=True)
    return []

  monkeypatch.setattr(cr, "compile_for_slice", compile_rule)
  monkeypatch.setattr(cr, "print_report", lambda *a: None)
  monkeypatch.setattr(cr, "table_row", lambda *a: "")
  assert cr.run_topology(configs.load("tiny"), "v5p").name == "v5p-64"
  assert tried == ["v5p-8", "v5p-16", "v5p-32", "v5p-64"]
  assert "Smallest v5p slice on which config compiles and fits: v5p-64" in capsys.readouterr().out

  def mosaic_error(config, sl, sampling=True):
    tried.append(sl.name)
    raise cr.CompileError("Mosaic: VMEM")

  tried.clear()
  monkeypatch.setattr(cr, "compile_for_slice", mosaic_error)
  with pytest.raises(cr.CompileError, match="Mosaic: VMEM"):
    cr.run_topology(configs.load("tiny"), "v5e")
  assert tried == ["v5e-1"]


def test_without_libtpu_the_dry_run_says_how_to_install_it(monkeypatch, capsys):
  monkeypatch.setattr(cr, "libtpu_available", lambda: False)
  assert cr.main(configs.load("tiny"), topology="v5e-1", devices=1) == 1
  out = capsys.readouterr().out
  assert "pip install 'mdm-jax[tpu]'" in out and "fake CPU devices" in out, out


def test_home_reads_the_configs_own_slice(capsys):
  config = configs.load("tiny")
  assert config.topology == "v5e-1" and configs.load("imagenet256").topology.startswith("v5p-")
  config.topology = "v5e-2"  # not a slice: the error shows that "home" read this field
  assert cr.main(config, topology="home", devices=1) == 1
  assert "no standard v5e slice has 2 chips" in capsys.readouterr().out
