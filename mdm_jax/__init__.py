"""mdm-jax: Multi-Modal Diffusion Mamba in JAX/Flax.

The model and diffusion modules import with jax, flax, optax and einops alone; the data
stack (grain, tensorflow-datasets, sentencepiece) is only needed by ``data/`` and the
``experiments/`` entry points.
"""
__version__ = "0.1.0"
