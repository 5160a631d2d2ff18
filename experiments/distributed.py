"""Joining a multi-process run, shared by the command-line tools.

On a TPU pod or under SLURM jax finds its peers itself. Elsewhere, e.g. several processes on one
machine, every process is given the coordinator (process 0's host:port), the process count and
its index, as arguments or as $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID:

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python -m experiments.train --config=tiny --workdir=/tmp/w \
    --coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0   # and =1
"""
from __future__ import annotations

import os

import jax


def maybe_initialize(mode: str = "auto", coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None) -> None:
  """Calls `jax.distributed.initialize` for mode "yes", or for "auto" when a multi-process
  environment is detected (a coordinator address, megascale, SLURM, several TPU workers)."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  multihost_env = coordinator_address or any(os.environ.get(k) for k in (
      "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_NUM_NODES"))
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if not (mode == "yes" or (mode == "auto" and (multihost_env or "," in tpu_hosts))):
    return
  if coordinator_address and (num_processes is None or process_id is None):
    raise ValueError(
        f"Coordinator {coordinator_address} given without the process count and index: pass "
        "--num_processes and --process_id (or set $JAX_NUM_PROCESSES and $JAX_PROCESS_ID).")
  # Cross-process collectives on CPU need an implementation (jax's default has varied between
  # versions); accelerators bring their own.
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def refuse_multiple_processes(tool: str) -> None:
  """Raises for a tool that runs in one process only, if this run has several."""
  if jax.process_count() > 1:
    raise RuntimeError(
        f"{tool} runs in one process, but this is process {jax.process_index()} of "
        f"{jax.process_count()}. Run it as a single process (one machine, without "
        "$JAX_COORDINATOR_ADDRESS, and not on every worker of a TPU pod): it reads the "
        "checkpoint that all training processes wrote.")
