"""The peer of ``bench ssd --peer``: mamba_ssm's ``ssd_minimal_discrete`` (its minimal SSD
reference), loaded from its source file and timed fwd+bwd under PyTorch on the CPU."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types

from absl import app

PEER_PATH = "mamba_ssm/modules/ssd_minimal.py"


def peer_source(peer_file=None) -> str:
  """The source of mamba_ssm's ``ssd_minimal.py``: from ``peer_file``, else from the mamba-ssm
  sdist fetched by ``pip download`` into a temporary directory (nothing of it is kept)."""
  if peer_file:
    if not os.path.isfile(peer_file):
      raise app.UsageError(f"--peer_file={peer_file} does not exist; pass the path of "
                           f"{PEER_PATH} from a mamba_ssm checkout or sdist")
    with open(peer_file) as f:
      return f.read()
  with tempfile.TemporaryDirectory() as tmp:
    # The sdist's metadata step imports torch (so no build isolation) and would build CUDA
    # kernels unless told to skip them; only the tarball is used.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "--quiet", "mamba-ssm", "-d", tmp]
    env = dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE")
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
      proc = types.SimpleNamespace(returncode=1, stderr=str(e))
    tarballs = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
    if proc.returncode or not tarballs:
      raise app.UsageError(
          "--peer: could not download the mamba-ssm sdist with `" + " ".join(cmd[2:]) + "` "
          "(preparing its metadata needs torch, setuptools and wheel importable: "
          + proc.stderr.strip()[-500:] + "); pass --peer_file=PATH/" + PEER_PATH + " instead")
    with tarfile.open(os.path.join(tmp, tarballs[0])) as tar:
      members = [m for m in tar.getmembers() if m.name.endswith(PEER_PATH)]
      if not members:
        raise app.UsageError(f"--peer: {tarballs[0]} has no {PEER_PATH}; pass --peer_file")
      return tar.extractfile(members[0]).read().decode()


def check_peer_deps():
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    import einops  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise app.UsageError(f"--peer needs torch and einops ({e}); e.g. `pip install torch einops`"
                         " in a virtual environment") from e


def load_peer(source: str):
  """``ssd_minimal_discrete`` from the source of ``ssd_minimal.py``.

  Its module imports the Triton kernels of mamba_ssm (used only by its own test), which are
  replaced by a stub while it is executed.
  """
  check_peer_deps()
  stubs = {}
  for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton",
               "mamba_ssm.ops.triton.ssd_combined"):
    stubs[name] = types.ModuleType(name)
  stubs["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined = None
  saved = {k: sys.modules.get(k) for k in stubs}
  sys.modules.update(stubs)
  try:
    namespace = {"__name__": "ssd_minimal"}
    exec(compile(source, PEER_PATH, "exec"), namespace)  # pylint: disable=exec-used
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  if "ssd_minimal_discrete" not in namespace:
    raise app.UsageError(f"--peer: the given {PEER_PATH} defines no ssd_minimal_discrete")
  return namespace["ssd_minimal_discrete"]


def time_peer(peer, x, dt, A, B, C, chunk: int, *, warmup: int, repeats: int) -> float:
  """Median fwd+bwd seconds of the peer in float32 on the CPU, on the same inputs as ours.

  Its inputs are per head and pre-discretised (X = x dt, A = A dt; B and C repeated over the
  heads of each group), all inside the autograd graph so that every input gets a gradient, as
  ours do.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  h, g = x.shape[2], B.shape[2]
  leaves = [torch.from_numpy(np.asarray(v, np.float32)).requires_grad_() for v in
            (x, dt, A, B, C)]

  def step():
    tx, tdt, tA, tB, tC = leaves
    for v in leaves:
      v.grad = None
    y, _ = peer(tx * tdt[..., None], tA * tdt, tB.repeat_interleave(h // g, dim=2),
                tC.repeat_interleave(h // g, dim=2), chunk)
    y.sum().backward()

  for _ in range(1 + warmup):
    step()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)
