"""The start-up check of the Pallas SSD kernel against "xla" (``mdm_jax.ssm.kernel_check``), on
CPU: the real kernel in interpret mode passes; a kernel faked to return wrong numbers (forward,
or only a gradient), NaNs, or to raise falls back to "xla" with a warning saying why and how to
force either impl. ``backend="tpu"`` makes "auto" resolve to the kernel as it does on a TPU."""
from __future__ import annotations

import re

import jax
import pytest

import pallas_kernels.ssd as pallas_ssd
from mdm_jax.ssm import kernel_check

SHAPES = dict(chunk_size=8, headdim=8, d_state=8, ngroups=2)
REAL_KERNEL = pallas_ssd.ssd


def _check(impl="auto", **kw):
  return kernel_check.checked_impl(impl, backend="tpu", target="interpret", **SHAPES, **kw)


def test_correct_kernel_passes():
  impl, check, warning = _check()
  assert (impl, warning) == ("auto", None)
  assert check.ok and check.error is None and check.max_error < 1e-5, check


def _scaled_forward(x, dt, A, B, C, **kw):
  y, h_last = REAL_KERNEL(x, dt, A, B, C, **kw)
  return y * 1.01, h_last


def _scaled_dx(x, dt, A, B, C, *, initial_state=None, **kw):
  """Right forward; the gradient of x 5% too large."""
  def kernel(x, dt, A, B, C, h0):
    return REAL_KERNEL(x, dt, A, B, C, initial_state=h0, **kw)

  def bwd(args, cts):
    dx, *rest = jax.vjp(kernel, *args)[1](cts)
    return (1.05 * dx, *rest)

  f = jax.custom_vjp(kernel)
  f.defvjp(lambda *args: (kernel(*args), args), bwd)
  return f(x, dt, A, B, C, initial_state)


# Scaling y by 1.01 gives exactly 0.01 on y (and on the gradients reached through y's cotangent
# alone; more where that part and h_last's partly cancel); scaling dx by 1.05 gives 0.05.
@pytest.mark.parametrize("fake, low, high", [(_scaled_forward, 0.01, 0.02),
                                             (_scaled_dx, 0.05, 0.05)])
def test_wrong_numbers_fall_back_to_xla(monkeypatch, fake, low, high):
  monkeypatch.setattr(pallas_ssd, "ssd", fake)
  impl, check, warning = _check()
  assert impl == "xla" and not check.ok and check.error is None
  assert low * (1 - 1e-4) <= check.max_error <= high * (1 + 1e-4), check.max_error
  assert "backend 'tpu'" in warning and f"{check.max_error:.3g}" in warning
  assert "Falling back to ssd_impl='xla'" in warning
  assert "--config.model.ssd_impl=pallas" in warning and "--config.model.ssd_impl=xla" in warning


def test_nan_output_falls_back(monkeypatch):
  monkeypatch.setattr(pallas_ssd, "ssd", lambda *a, **kw: jax.tree.map(
      lambda v: v * float("nan"), REAL_KERNEL(*a, **kw)))
  impl, check, _ = _check()
  assert impl == "xla" and not check.ok


def test_kernel_that_fails_to_compile_falls_back(monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("Mosaic failed to legalize vector.contract")

  monkeypatch.setattr(pallas_ssd, "ssd", broken)
  impl, check, warning = _check()
  assert impl == "xla" and not check.ok
  assert "Mosaic failed to legalize" in check.error
  assert re.search(r"backend 'tpu' failed to compile or run \(RuntimeError: Mosaic", warning)
  # An explicit "pallas" is the user forcing the kernel: kept, but the warning still says so.
  impl, _, warning = _check("pallas")
  assert impl == "pallas" and "forces it" in warning and "--config.model.ssd_impl=xla" in warning


def test_no_check_where_the_kernel_does_not_run(monkeypatch):
  def must_not_run(*args, **kwargs):
    raise AssertionError("the kernel ran")

  monkeypatch.setattr(pallas_ssd, "ssd", must_not_run)
  assert kernel_check.checked_impl("auto", backend="cpu", **SHAPES) == ("auto", None, None)
  assert kernel_check.checked_impl("xla", backend="tpu", **SHAPES) == ("xla", None, None)
