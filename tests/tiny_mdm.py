"""Shared by the model tests: a tiny MDM config, fast-compiling keys and options, making the
zero-initialised kernels random so that at init every block and head reacts to its input, and
the token-to-token dependencies of a denoiser (its Jacobian), one block's scan at a time."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import base
from mdm_jax.models.mdm import MDMConfig
from mdm_jax.training import sharding

VOCAB, TEXT_LEN, NUM_CLASSES = 40, 8, 10
# The runs' logical axis rules (the base config's table).
RULES = sharding.as_rules(base.get_config().sharding.logical_axis_rules)
# Compile-bound tests: skip XLA's optimisation passes (about 40% less compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def key(seed):
  """A PRNG key whose random bits compile faster than threefry's."""
  return jax.random.key(seed, impl="unsafe_rbg")


def tiny_config(**overrides) -> MDMConfig:
  kw = dict(image_size=8, channels=1, patch_size=2, max_text_len=TEXT_LEN, vocab_size=VOCAB,
            num_classes=NUM_CLASSES, vae_width=32, vae_depth=1, latent_dim=4, d_model=32,
            n_layers=2, headdim=16, d_state=8, chunk_size=8)
  kw.update(overrides)
  return MDMConfig(**kw)


def abstract_inputs(cfg: MDMConfig):
  """(PRNG key, images (clips for a clip model), text ids) as ShapeDtypeStructs for an abstract
  ``MDM(cfg).init``."""
  return (jax.ShapeDtypeStruct((2,), jnp.uint32),  # a raw PRNG key
          jax.ShapeDtypeStruct((1, *cfg.visual_shape), jnp.float32),
          jax.ShapeDtypeStruct((1, cfg.max_text_len), jnp.int32))


def randomize_zero_kernels(params, seed=10, scale=0.1):
  """Zero-initialised kernels (the output heads, adaLN-Zero modulation) -> small random values,
  so that at init every block and head reacts to its input and gradients reach the backbone."""
  rs = np.random.RandomState(seed)

  def fill(path, x):
    if path[-1].key == "kernel" and not np.any(np.asarray(x)):
      return jnp.asarray(scale * rs.randn(*x.shape), x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(fill, params)


def token_dependencies(apply, z_img, z_txt):
  """The jitted ``p -> [out, in]`` dependency matrix of a denoiser: ``apply({"params": p},
  z_img, z_txt)`` returns (image or clip output, text output) for one example; entry (o, i) is
  max |d out_o / d in_i| over channels, the tokens the image (or clip) segment's then the text's.
  Reverse mode: the SSD's custom VJP (impl "xla" and "pallas") has no forward-mode rule."""

  @jax.jit(compiler_options=FAST_COMPILE)
  def dependencies(p):
    jac = jax.jacrev(apply, argnums=(1, 2))({"params": p}, z_img, z_txt)
    dep = lambda j: jnp.max(jnp.abs(j[0, :, :, 0]), axis=(1, 3))
    (ii, it), (ti, tt) = jac
    return jnp.block([[dep(ii), dep(it)], [dep(ti), dep(tt)]])

  return dependencies


def only_layer(params, layer: int):
  """The denoiser's params with every block's mixer output projection zeroed but ``layer``'s:
  a token then reaches another only through that block's scan (the residual stream carries the
  rest token by token)."""
  out_proj = params["layers"]["mixer"]["out_proj"]["kernel"]  # (n_layers, d_inner, d_model)
  keep = (jnp.arange(out_proj.shape[0]) == layer)[:, None, None]
  p = jax.tree.map(lambda x: x, params)  # fresh dicts, same arrays
  p["layers"]["mixer"]["out_proj"] = dict(kernel=jnp.where(keep, out_proj, 0.0))
  return p
