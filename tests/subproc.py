"""Subprocesses for the tests (the command-line tools, fresh interpreters), each with a bound
against hangs: generous, so that it never judges the machine's speed, and when it is reached the
test fails with the command and the tail of what it printed, not a bare TimeoutExpired.

The subprocesses inherit the conftest's environment, with it the run's shared compilation cache
($JAX_COMPILATION_CACHE_DIR): a program another test or subprocess compiled is read back.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny CLI run takes 10-60 s on 2 idle cores and several times that on a loaded machine;
# only a process stuck for this long fails its test.
HANG_TIMEOUT_S = 1800


def env(devices: int | None = None, **extra: str) -> dict[str, str]:
  """os.environ on CPU; the conftest's 8 fake devices replaced by `devices` (None: jax's one).

  One device is left unset rather than forced to 1, so that every one-device subprocess has the
  same XLA_FLAGS, which are part of the compilation cache's key."""
  out = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  flags = [f for f in out.get("XLA_FLAGS", "").split() if "device_count" not in f]
  if devices is not None and devices != 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  out["XLA_FLAGS"] = " ".join(flags)
  return out


def tail(text: str | bytes | None, chars: int = 3000) -> str:
  if isinstance(text, bytes):
    text = text.decode(errors="replace")
  return (text or "")[-chars:]


def hang_report(cmd, timeout: float, output: str) -> str:
  return (f"still running after {timeout:.0f} s, killed (a hang? the bound is far above a "
          f"busy machine's time): {shlex.join(map(str, cmd))}\n--- last output:\n{output}")


def run(cmd: list[str], *, timeout: float = HANG_TIMEOUT_S, env_: dict | None = None,
        cwd: str = REPO) -> subprocess.CompletedProcess:
  """subprocess.run with captured text output; past `timeout` the test fails with a report."""
  try:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env() if env_ is None else env_,
                          capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    pytest.fail(hang_report(cmd, timeout, tail(e.stdout) + "\n--- stderr:\n" + tail(e.stderr)),
                pytrace=False)


def run_module(module: str, *args: str, devices: int | None = None,
               timeout: float = HANG_TIMEOUT_S) -> subprocess.CompletedProcess:
  """`python -m module args` from the repo root on `devices` CPU devices."""
  return run([sys.executable, "-m", module, *args], timeout=timeout, env_=env(devices))


def wait(proc: subprocess.Popen, log_path, timeout: float = HANG_TIMEOUT_S) -> int:
  """proc's return code; past `timeout` it is killed and the test fails with its log's tail."""
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    with open(log_path, errors="replace") as f:
      pytest.fail(hang_report(proc.args, timeout, tail(f.read())), pytrace=False)
