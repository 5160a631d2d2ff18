"""mdm-jax: Multi-Modal Diffusion Mamba in JAX/Flax.

The model and diffusion modules import with jax, flax, optax and einops alone; the data
stack (grain, tensorflow-datasets, sentencepiece) is only needed by ``data/`` and the
``experiments/`` entry points (and by ``mdm_jax.load``, which imports it when called).
"""
__version__ = "0.1.0"


def load(path, **kwargs):
  """A trained run (workdir or export) ready to generate: see ``mdm_jax.api.load``."""
  from mdm_jax import api  # the data stack is imported only here, when a run is opened
  return api.load(path, **kwargs)
