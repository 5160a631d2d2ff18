"""Pallas kernels for mdm-jax (TPU via Mosaic, GPU via Triton; interpret mode on CPU).

Subpackages:
  * ``pallas_kernels.ssd``: the chunked Mamba-2 SSD scan, forward and backward.
"""
