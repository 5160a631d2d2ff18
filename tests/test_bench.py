"""experiments/bench.py: the matched-parameter Transformer and the memory guard (no timings)."""
import sys

import jax
import pytest
from absl import app, flags

from experiments import bench
from mdm_jax.models.mdm import MDM
from mdm_jax.models.param_count import count_params
from mdm_jax.training.trainer import model_config
import subproc
from tiny_mdm import abstract_inputs

FLAGS = flags.FLAGS


@pytest.fixture
def bench_flags():
  """Parses bench's flags for a small model; restores the defaults afterwards."""
  FLAGS.unparse_flags()
  FLAGS(["bench", "--d_model=64", "--n_layers=2", "--model_batch=1", "--repeats=1",
         "--warmup=0"])
  yield FLAGS
  FLAGS.unparse_flags()


def _count(c):
  """The model's parameter count from abstract init (param_count's own tests check it against
  a by-hand count); independent of the trainer that bench uses."""
  mc = model_config(c, vocab_size=256, num_classes=10)
  return count_params(MDM(mc).init, *abstract_inputs(mc), depth=1)["total"]


def test_transformer_matches_mamba_parameter_count(bench_flags):
  m = bench.bench_config("mamba2", 64)
  t = bench.bench_config("transformer", 64)
  assert (m.model.backbone, t.model.backbone) == ("mamba2", "transformer")
  n_m, n_t = _count(m), _count(t)
  # One SwiGLU hidden unit is 3 * d_model weights per block: the best a width can match.
  assert abs(n_m - n_t) <= 3 * 64 * 2 / 2 + 1, (n_m, n_t)
  assert int(t.model.mlp_ratio * 64) > int(m.model.mlp_ratio * 64)  # attention is smaller
  with pytest.raises(app.UsageError, match="unknown backbone"):
    bench.bench_config("rwkv", 64)


def test_clip_configs_match_parameters_and_count_every_frame(bench_flags):
  """--clip_frames: T frames of the same grid, tubelet 1; the two backbones still match."""
  m = bench.bench_config("mamba2", 16, frames=4)
  t = bench.bench_config("transformer", 16, frames=4)
  for c in (m, t):
    mc = model_config(c, vocab_size=256, num_classes=10)
    assert (mc.frames, mc.tubelet, mc.n_image_tokens) == (4, 1, 4 * 16)
  assert abs(_count(m) - _count(t)) <= 3 * 64 * 2 / 2 + 1


def test_model_bench_skips_a_step_over_the_memory_budget(bench_flags, capsys):
  FLAGS.image_tokens = ["16"]
  FLAGS.max_gib = 1e-6
  FLAGS.model_batch = jax.device_count()  # the conftest's 8 CPU devices split the batch
  FLAGS.d_model, FLAGS.n_layers = 32, 1   # steps are compiled, never run: the smallest model
  # One backbone per call (each is one compile): the Transformer on images, Mamba-2 on clips.
  FLAGS.backbones = ["transformer"]
  bench.bench_model()
  out = capsys.readouterr().out
  assert out.count("skipped, the compiled step needs") == 1
  assert "| 16 | skipped (memory) |" in out
  FLAGS.clip_frames, FLAGS.frame_tokens = ["2"], 16     # clips: one row per clip length
  FLAGS.backbones = ["mamba2"]
  bench.bench_model()
  assert "| 2 | 32 | skipped (memory) |" in capsys.readouterr().out


@pytest.mark.parametrize("cli", ["experiments.ablation", "experiments.bench"])
def test_evaluate_imports_beside_the_clis_that_use_it(cli):
  """bench sampler imports experiments.evaluate at run time, and ablation and evaluate share
  flag names; evaluate's CLI flags (--workdir, --steps, ...) must not be defined a second time."""
  code = f"import {cli}, experiments.evaluate as e; assert callable(e.evaluate)"
  proc = subproc.run([sys.executable, "-c", code])
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_peer_file_errors_name_the_flag(tmp_path):
  with pytest.raises(app.UsageError, match="--peer_file=.*does not exist"):
    bench.peer_source(str(tmp_path / "missing.py"))
  src = tmp_path / "ssd_minimal.py"
  src.write_text("x = 1\n")
  assert bench.peer_source(str(src)) == "x = 1\n"


def test_load_peer_stubs_the_triton_import(tmp_path):
  """The peer's module imports mamba_ssm's Triton kernels at the top; load_peer runs it with a
  stub for them and returns its ssd_minimal_discrete (or says that torch/einops are needed)."""
  source = ("from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined\n"
            "def ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):\n"
            "  return 'peer', block_len\n")
  try:
    import torch, einops  # noqa: F401  pylint: disable=g-import-not-at-top,multiple-imports
  except ImportError:
    with pytest.raises(app.UsageError, match="needs torch and einops"):
      bench.load_peer(source)
    return
  peer = bench.load_peer(source)
  assert peer(None, None, None, None, 64) == ("peer", 64)
  assert "mamba_ssm" not in sys.modules  # the stubs are removed again
  with pytest.raises(app.UsageError, match="defines no ssd_minimal_discrete"):
    bench.load_peer("y = 2\n")


@pytest.mark.parametrize("impls, header", [
    (("xla",), "| length | xla (ms) |"),
    (("xla", "scan"), "| length | xla (ms) | scan (ms) | scan / xla |"),
    (("scan",), "| length | scan (ms) |"),
])
def test_ssd_table_has_one_column_per_number(bench_flags, capsys, impls, header):
  rows = [{"length": 256, **{k: 0.002 for k in impls}},
          {"length": 512, **{k: 0.004 for k in impls}}]
  bench.print_table(rows)
  lines = capsys.readouterr().out.splitlines()
  i = lines.index(header)
  assert lines[i + 1] == "|" + "---|" * (header.count("|") - 1)
  assert lines[i + 2].count("|") == header.count("|")
  assert f"{impls[0]}: 512 / 256 tokens = 2.0x the time (linear: 2x)" in lines



def test_steps_variant_sets_the_named_fields():
  from experiments import configs
  from experiments.benchmarks.steps import parse_variant, with_fields
  label, name, values = parse_variant("rolled=digits model.scan_unroll=1 model.ssd_impl=xla "
                                      "optim.lr=1e-3")
  assert (label, name) == ("rolled", "digits")
  assert values == {"model.scan_unroll": 1, "model.ssd_impl": "xla", "optim.lr": 1e-3}
  c = with_fields(configs.load(name), values, label)
  assert (c.model.scan_unroll, c.model.ssd_impl, c.optim.lr) == (1, "xla", 1e-3)
  assert c.model.n_layers == configs.load("digits").model.n_layers   # the rest unchanged


@pytest.mark.parametrize("spec, match", [
    ("digits model.scan_unroll=1", "LABEL=CONFIG"),
    ("a=digits model.scan_unroll", "LABEL=CONFIG"),
    ("a=digits model.scan_unrol=1", "no field 'model.scan_unrol'"),
    ("a=digits modle.n_layers=2", "no field 'modle.n_layers'")])
def test_steps_variant_errors_name_the_problem(spec, match):
  from experiments import configs
  from experiments.benchmarks.steps import parse_variant, with_fields
  with pytest.raises(app.UsageError, match=match):
    label, name, values = parse_variant(spec)
    with_fields(configs.load(name), values, label)


def test_profile_sums_op_time_by_kind_and_skips_what_is_not_an_op():
  from experiments.benchmarks.profile import op_time_by_kind
  x = lambda name, dur: {"ph": "X", "name": name, "dur": dur}
  events = [x("ynn_fusion.3", 3000), x("ynn_fusion.12", 1000), x("copy_bitcast_fusion", 2000),
            x("ThunkExecutor::Execute", 9000), x("$api.py:2479 block_until_ready", 9000),
            x("while.398", 9000), {"ph": "i", "name": "copy.4"}, x("copy.4", 400)]
  assert op_time_by_kind(events, steps=2) == [("ynn_fusion", 2.0, 1.0),
                                              ("copy_bitcast_fusion", 1.0, 0.5),
                                              ("copy", 0.2, 0.5)]
