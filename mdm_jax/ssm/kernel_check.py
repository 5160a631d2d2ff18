"""Start-up safety check of the Pallas SSD kernel against the pure-XLA ``"xla"`` scan.

A user whose accelerator (or jax / libtpu / Triton version) was never measured must not get
silently wrong numbers: before training, ``checked_impl`` runs the kernel and ``"xla"`` on one
small input on the current backend (forward and gradients) and, when they differ beyond a
tolerance or the kernel fails to compile or run, returns ``"xla"`` for the run with a warning.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.ssm import kernel
from mdm_jax.ssm.ssd import resolve_impl, ssd_chunked

_CHECK_TOL = {"float32": 1e-3, "bfloat16": 2e-2}


@dataclasses.dataclass(frozen=True)
class KernelCheck:
  """Outcome of ``check_kernel``: ``max_error`` is the largest relative error (max |kernel -
  xla| / max |xla|) over y, h_last and the gradient of every input; ``error`` the exception's
  text when the kernel failed to compile or run (then max_error is nan)."""
  ok: bool
  backend: str
  target: str
  max_error: float
  tol: float
  error: Optional[str] = None


def check_kernel(*, chunk_size: int = 16, headdim: int = 16, d_state: int = 16,
                 ngroups: int = 1, dtype="float32", target: str = "auto",
                 tol: Optional[float] = None, seed: int = 0) -> KernelCheck:
  """Runs the Pallas kernel and ``"xla"`` on one small random input on the default backend.

  The input has the model's head dim, state size, groups, chunk size and dtype, and a small
  batch, head count and length (2 chunks plus a remainder). Forward outputs and the VJP under a
  random cotangent are compared; the reference's matmuls run at ``"highest"`` precision, as the
  kernel's do. Never raises for the kernel's failures: they come back in ``KernelCheck.error``.
  """
  dtype = jnp.dtype(dtype)
  tol = _CHECK_TOL.get(dtype.name, 2e-2) if tol is None else tol
  heads = 2 * ngroups if ngroups > 1 else 4
  b, l, p, n = 2, 2 * chunk_size + 3, headdim, d_state
  rng = np.random.default_rng(seed)
  normal = lambda *s: rng.standard_normal(s).astype(np.float32)
  args = (jnp.asarray(normal(b, l, heads, p), dtype),
          jnp.asarray(np.logaddexp(0.0, normal(b, l, heads) - 1.0)),  # softplus: dt > 0
          jnp.asarray(-np.exp(0.5 * normal(heads))),
          jnp.asarray(normal(b, l, ngroups, n), dtype),
          jnp.asarray(normal(b, l, ngroups, n), dtype),
          jnp.asarray(normal(b, heads, p, n)))
  cotangents = (jnp.asarray(normal(b, l, heads, p), dtype), jnp.asarray(normal(b, heads, p, n)))

  def outputs_and_grads(fn):
    def run(*args):
      out, vjp = jax.vjp(fn, *args)
      return out, vjp(cotangents)
    out, grads = jax.jit(run)(*args)
    return [np.asarray(v, np.float32) for v in (*out, *grads)]

  backend = jax.default_backend()
  try:
    got = outputs_and_grads(
        lambda *a: kernel.kernel_call(*a, chunk_size=chunk_size, target=target))
  except Exception as e:  # pylint: disable=broad-except
    return KernelCheck(False, backend, target, float("nan"), tol, f"{type(e).__name__}: {e}")
  with jax.default_matmul_precision("highest"):
    ref = outputs_and_grads(lambda *a: ssd_chunked(*a[:5], a[5], chunk_size=chunk_size))
  errors = [np.abs(g - r).max() / max(np.abs(r).max(), 1e-30) for g, r in zip(got, ref)]
  max_error = float(np.max(errors))  # nan propagates: a non-finite output fails the check
  return KernelCheck(bool(max_error <= tol), backend, target, max_error, tol)


def checked_impl(impl: str, *, backend: Optional[str] = None, **check_kwargs):
  """The SSD impl a run should use, after checking the kernel where ``impl`` resolves to it.

  Args:
    impl: the model config's ``ssd_impl``.
    backend: the platform the run computes on (default ``jax.default_backend()``); "auto"
      resolves to the kernel on "tpu" and "gpu".
    **check_kwargs: ``check_kernel``'s arguments (the model's shapes, dtype and target).

  Returns:
    (impl, check, warning): ``"xla"`` instead of ``"auto"`` when the check failed (an explicit
    ``"pallas"`` is kept: the user forced it); the ``KernelCheck`` or None when no kernel runs;
    and a warning to log, or None.
  """
  backend = backend or jax.default_backend()
  if resolve_impl(impl, backend) != "pallas":
    return impl, None, None
  check = check_kernel(**check_kwargs)
  ok = check.ok
  if jax.process_count() > 1:  # every process must run the same program: one failure decides
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = bool(np.all(multihost_utils.process_allgather(np.int32(check.ok))))
  if ok:
    return impl, check, None
  error = check.error if check.error is None or len(check.error) < 800 else (
      check.error[:800] + " ...")
  what = ("passed here but failed on another process" if check.ok else
          f"failed to compile or run ({error})" if check.error else
          f"differs from 'xla' by a relative error of {check.max_error:.3g} (tolerance "
          f"{check.tol:g})")
  if impl == "auto":
    action = ("Falling back to ssd_impl='xla' for this run. Set --config.model.ssd_impl=pallas "
              "to use the kernel anyway, or --config.model.ssd_impl=xla to skip this check.")
    impl = "xla"
  else:
    action = ("Keeping the kernel, since --config.model.ssd_impl=pallas forces it; set "
              "--config.model.ssd_impl=xla (or auto) to use the pure-XLA scan instead.")
  warning = (f"The Pallas SSD kernel (pallas_target={check.target!r}) on backend "
             f"{backend!r} {what}. {action}")
  return impl, check, warning
