"""The Mamba-2 mixer block (Dao & Gu, 2024), as in mamba_ssm's ``Mamba2``, in Flax linen.

    u (b, l, d_model)
      --in_proj--> [z (d_inner), xBC (d_inner + 2 g n), dt (h)]
      xBC --causal depthwise conv (width d_conv) + SiLU--> x (h, p), B (g, n), C (g, n)
      y = SSD(x, softplus(dt + dt_bias), A = -exp(A_log), B, C) + D * x
      y = RMSNorm(y * SiLU(z))          (gated norm, per group of d_inner / g channels)
      --out_proj--> (b, l, d_model)

``selective=False`` is the paper's "w/o selection" ablation: dt, B and C stop depending on the
input and become learned parameters (an LTI SSM); ``in_proj`` then produces only z and x and the
conv runs over x alone. Everything else is unchanged.

``step`` runs one token at a time, carrying the conv window and the SSM state, and gives the
same outputs as ``__call__`` on the whole sequence (recurrent decoding / streaming).

Parameters are float32 (``param_dtype``); activations use ``dtype`` (e.g. bf16); the SSM itself
keeps dt, decays and states in float32 (see ``mdm_jax.ssm.ssd``). Every parameter carries
logical axis names (``embed``, ``mlp``, ``heads``, ``conv``, ``state``), and activations their
own (``activation_batch``, ``activation_length``, ``activation_mlp``), that the config's
``sharding.logical_axis_rules`` map onto the device mesh (``mdm_jax.training.sharding``).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.ssm.ssd import ssd

Dtype = Any


class Mamba2State(NamedTuple):
  """Recurrent state for ``Mamba2.step``."""
  conv: jax.Array  # (b, d_conv - 1, conv_channels): the last inputs of the conv window
  ssm: jax.Array   # (b, h, p, n) float32


def causal_depthwise_conv(x, kernel, bias):
  """Causal depthwise 1-D conv as shift-and-add.

  x (b, l, c), kernel (k, c), bias (c,) -> (b, l, c);  y_t = sum_j kernel[j] x_{t-k+1+j} + bias.
  Written as k shifted multiply-adds instead of ``lax.conv``: the kernel gradient of a depthwise
  conv inside ``lax.scan`` measured ~40x slower on CPU (jax 0.10), and k is only 4.
  """
  k = kernel.shape[0]
  length = x.shape[1]
  xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
  y = sum(xp[:, j:j + length] * kernel[j] for j in range(k))
  return y + bias


def _dt_bias_init(dt_min, dt_max, dt_floor):
  """softplus(dt_bias) ~ log-uniform in [dt_min, dt_max] (floored), as mamba_ssm."""
  def init(key, shape, dtype=jnp.float32):
    u = jax.random.uniform(key, shape, dtype)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # inverse softplus
  return init


def _a_log_init(a_min, a_max):
  def init(key, shape, dtype=jnp.float32):
    return jnp.log(jax.random.uniform(key, shape, dtype, minval=a_min, maxval=a_max))
  return init


class GatedRMSNorm(nn.Module):
  """RMSNorm(y * SiLU(z)) over groups of channels (mamba_ssm's RMSNormGated, norm after gate)."""
  groups: int = 1
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, y, z):
    d = y.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("mlp",)),
                       (d,), jnp.float32)
    h = (y.astype(jnp.float32) * nn.silu(z.astype(jnp.float32)))
    h = h.reshape(*h.shape[:-1], self.groups, d // self.groups)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
    return (h.reshape(*y.shape) * scale).astype(self.dtype)


class Mamba2(nn.Module):
  """Mamba-2 mixer. Input and output (b, l, d_model)."""
  d_model: int
  d_state: int = 64
  d_conv: int = 4
  expand: int = 2
  headdim: int = 64
  ngroups: int = 1
  selective: bool = True
  chunk_size: int = 64
  ssd_impl: str = "auto"
  pallas_target: str = "auto"       # which Pallas kernel ``ssd_impl="pallas"`` runs (ssm.kernel)
  dt_min: float = 1e-3
  dt_max: float = 0.1
  dt_floor: float = 1e-4
  a_init_range: tuple[float, float] = (1.0, 16.0)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def d_inner(self) -> int:
    return self.expand * self.d_model

  @property
  def nheads(self) -> int:
    if self.d_inner % self.headdim:
      raise ValueError(f"Mamba2: d_inner = expand * d_model = {self.d_inner} must be a multiple"
                       f" of headdim = {self.headdim}")
    return self.d_inner // self.headdim

  @property
  def conv_channels(self) -> int:
    bc = 2 * self.ngroups * self.d_state if self.selective else 0
    return self.d_inner + bc

  def setup(self):
    h, g, n = self.nheads, self.ngroups, self.d_state
    if h % g:
      raise ValueError(f"Mamba2: nheads ({h}) must be a multiple of ngroups ({g})")
    proj_out = 2 * self.d_inner + (2 * g * n + h if self.selective else 0)
    lp = nn.with_logical_partitioning
    self.in_proj = nn.Dense(
        proj_out, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=lp(nn.initializers.lecun_normal(), ("embed", "mlp")), name="in_proj")
    self.out_proj = nn.Dense(
        self.d_model, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=lp(nn.initializers.lecun_normal(), ("mlp", "embed")), name="out_proj")
    conv_bound = 1.0 / math.sqrt(self.d_conv)  # PyTorch Conv1d default (fan_in = d_conv)
    uniform = lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -conv_bound, conv_bound)
    self.conv_kernel = self.param("conv_kernel", lp(uniform, ("conv", "mlp")),
                                  (self.d_conv, self.conv_channels), self.param_dtype)
    self.conv_bias = self.param("conv_bias", lp(uniform, ("mlp",)),
                                (self.conv_channels,), self.param_dtype)
    self.A_log = self.param("A_log", lp(_a_log_init(*self.a_init_range), ("heads",)),
                            (h,), jnp.float32)
    self.dt_bias = self.param(
        "dt_bias", lp(_dt_bias_init(self.dt_min, self.dt_max, self.dt_floor), ("heads",)),
        (h,), jnp.float32)
    self.D = self.param("D", lp(nn.initializers.ones, ("heads",)), (h,), jnp.float32)
    if not self.selective:
      # Input-independent B and C (one per group), shared over all positions.
      self.B_lti = self.param("B", lp(nn.initializers.normal(1.0), (None, "state")),
                              (g, n), self.param_dtype)
      self.C_lti = self.param("C", lp(nn.initializers.normal(1.0), (None, "state")),
                              (g, n), self.param_dtype)
    self.norm = GatedRMSNorm(groups=g, dtype=self.dtype, name="norm")

  def _split_projection(self, zxbcdt):
    """(..., proj_out) -> z (..., d_inner), xBC (..., conv_channels), dt_raw (..., h) or None."""
    z = zxbcdt[..., :self.d_inner]
    xbc = zxbcdt[..., self.d_inner:self.d_inner + self.conv_channels]
    dt_raw = zxbcdt[..., self.d_inner + self.conv_channels:] if self.selective else None
    return z, xbc, dt_raw

  def _ssm_inputs(self, xbc, dt_raw):
    """Conv output (..., conv_channels) -> x (..., h, p), dt (..., h), B, C (..., g, n)."""
    h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
    lead = xbc.shape[:-1]
    x = xbc[..., :self.d_inner].reshape(*lead, h, p)
    if self.selective:
      B = xbc[..., self.d_inner:self.d_inner + g * n].reshape(*lead, g, n)
      C = xbc[..., self.d_inner + g * n:].reshape(*lead, g, n)
      dt = jax.nn.softplus(dt_raw.astype(jnp.float32) + self.dt_bias)
    else:
      B = jnp.broadcast_to(self.B_lti.astype(self.dtype), (*lead, g, n))
      C = jnp.broadcast_to(self.C_lti.astype(self.dtype), (*lead, g, n))
      dt = jnp.broadcast_to(jax.nn.softplus(self.dt_bias), (*lead, h))
    return x, dt, B, C

  def __call__(self, u):
    """u (b, l, d_model) -> (b, l, d_model)."""
    zxbcdt = nn.with_logical_constraint(self.in_proj(u.astype(self.dtype)),
                                        ("activation_batch", "activation_length",
                                         "activation_mlp"))
    z, xbc, dt_raw = self._split_projection(zxbcdt)
    xbc = nn.silu(causal_depthwise_conv(xbc, self.conv_kernel.astype(self.dtype),
                                        self.conv_bias.astype(self.dtype)))
    x, dt, B, C = self._ssm_inputs(xbc, dt_raw)
    A = -jnp.exp(self.A_log.astype(jnp.float32))
    y, _ = ssd(x, dt, A, B, C, chunk_size=self.chunk_size, impl=self.ssd_impl,
               pallas_target=self.pallas_target)
    y = y + x * self.D.astype(self.dtype)[:, None]
    y = y.reshape(*y.shape[:2], self.d_inner)
    return self.out_proj(self.norm(y, z))

  def init_state(self, batch: int) -> Mamba2State:
    """Zero recurrent state for ``step``."""
    return Mamba2State(
        conv=jnp.zeros((batch, self.d_conv - 1, self.conv_channels), self.dtype),
        ssm=jnp.zeros((batch, self.nheads, self.headdim, self.d_state), jnp.float32))

  def step(self, u_t, state: Mamba2State):
    """One token: u_t (b, d_model), state -> (y_t (b, d_model), new state)."""
    z, xbc, dt_raw = self._split_projection(self.in_proj(u_t.astype(self.dtype)))
    window = jnp.concatenate([state.conv, xbc[:, None].astype(state.conv.dtype)], axis=1)
    xbc = jnp.einsum("bkc,kc->bc", window, self.conv_kernel.astype(self.dtype))
    xbc = nn.silu(xbc + self.conv_bias.astype(self.dtype))
    x, dt, B, C = self._ssm_inputs(xbc, dt_raw)
    r = self.nheads // self.ngroups
    A = -jnp.exp(self.A_log.astype(jnp.float32))
    Bh = jnp.repeat(B.astype(jnp.float32), r, axis=1)  # (b, h, n)
    Ch = jnp.repeat(C.astype(jnp.float32), r, axis=1)
    xf = x.astype(jnp.float32)
    ssm = (jnp.exp(dt * A)[..., None, None] * state.ssm
           + (dt[..., None] * xf)[..., None] * Bh[:, :, None, :])
    y = jnp.einsum("bhpn,bhn->bhp", ssm, Ch).astype(self.dtype)
    y = y + x * self.D.astype(self.dtype)[:, None]
    y = self.out_proj(self.norm(y.reshape(y.shape[0], self.d_inner), z))
    return y, Mamba2State(conv=window[:, 1:], ssm=ssm)
