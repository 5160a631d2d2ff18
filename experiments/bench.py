r"""Benchmarks, one CLI. Speed and memory are measured here, not in timed tests.

  python -m experiments.bench ssd [--impl=scan,xla,attention] [--lengths=1024,...,65536] [--peer]
      fwd+bwd time of the SSD implementations against a naive softmax attention with the same
      heads, per sequence length; prints a markdown table (and ratios) and writes it as JSON to
      --out when given. --peer adds mamba_ssm's minimal SSD reference under PyTorch CPU (needs
      torch and einops; see ``benchmarks/peer.py``).
  python -m experiments.bench model [--image_tokens=256,1024,4096,16384] [--max_gib=12]
      [--clip_frames=8,16,32,64 --frame_tokens=256]   # clips: per clip length
      train-step time and compiled memory of MDM against the Transformer backbone at matched
      parameter counts; a step whose compiled memory exceeds --max_gib is reported, not run.
  python -m experiments.bench steps [--configs=digits,video_digits]
      [--variant='LABEL=CONFIG key=value ...']   # repeatable
      named configs' train steps (and variants of them with fields changed) timed in turn in one
      process, and each loop's estimate (total_steps x step) against the first config's.
  python -m experiments.bench profile [--profile_config=digits] [--trace_dir=DIR]
      a config's train step traced with jax.profiler: its time by XLA op kind, beside the step's
      wall time and XLA's FLOP and byte counts (the trace stays for TensorBoard or Perfetto).
  python -m experiments.bench mfu
      the digits train step's achieved FLOP/s against a matmul peak measured in the same run.
  python -m experiments.bench sampler --workdir=DIR
      image sampler and steps against class accuracy and FID on a trained digits run.
  python -m experiments.bench data
      batches/s of the digits input pipeline.

Each benchmark is a module of ``experiments/benchmarks/`` (its flags beside it; ``--warmup``,
``--repeats``, ``--max_gib`` and ``--out`` are shared). Each measurement compiles once, runs
``--warmup`` times, then reports the median of ``--repeats`` timed runs (``block_until_ready``
on every output).
"""
from __future__ import annotations

from absl import app

from experiments import allocator
# Besides the registry's functions: bench_config, load_peer, peer_source and print_table stay
# importable as experiments.bench.X.
from experiments.benchmarks.input_pipeline import bench_data
from experiments.benchmarks.mfu import bench_mfu
from experiments.benchmarks.model import bench_config, bench_model  # noqa: F401
from experiments.benchmarks.peer import load_peer, peer_source  # noqa: F401
from experiments.benchmarks.profile import bench_profile
from experiments.benchmarks.sampler import bench_sampler
from experiments.benchmarks.ssd import bench_ssd, print_table  # noqa: F401
from experiments.benchmarks.steps import bench_steps

BENCHES = {"ssd": bench_ssd, "model": bench_model, "mfu": bench_mfu, "sampler": bench_sampler,
           "data": bench_data, "steps": bench_steps, "profile": bench_profile}


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHES:
    raise app.UsageError(f"usage: python -m experiments.bench {{{','.join(BENCHES)}}} [flags]")
  BENCHES[argv[1]]()


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()  # XLA:CPU's steps, up to a third faster
  app.run(main)
