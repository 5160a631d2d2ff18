"""Chunked Mamba-2 SSD scan as Pallas kernels; see ``pallas_kernels.ssd.ops`` for the contract."""
from pallas_kernels.ssd.ops import ssd

__all__ = ["ssd"]
