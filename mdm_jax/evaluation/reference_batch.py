"""Reading ADM-style reference batches (``VIRTUAL_imagenet256_labeled.npz`` and friends).

ADM's evaluator takes an ``.npz`` whose ``arr_0`` holds uint8 NHWC images and which may carry
precomputed InceptionV3 pool statistics ``mu`` (2048,) and ``sigma`` (2048, 2048) (the
spatial ``mu_s``/``sigma_s`` for sFID are read too when present). Sample files written by
``experiments.sample`` use ``images`` instead of ``arr_0``; both names are accepted.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

_IMAGE_KEYS = ("arr_0", "images")


@dataclasses.dataclass(frozen=True)
class ReferenceBatch:
  """images (n, h, w, c) uint8; mu (d,) / sigma (d, d) or None; spatial_* likewise."""
  images: np.ndarray
  mu: np.ndarray | None = None
  sigma: np.ndarray | None = None
  spatial_mu: np.ndarray | None = None
  spatial_sigma: np.ndarray | None = None


def load_reference_batch(path: str) -> ReferenceBatch:
  """Loads an ADM reference-batch ``.npz``; validates the images and statistics.

  Raises:
    FileNotFoundError: no such file. ValueError: no image array, images not uint8 NHWC, or
    inconsistent ``mu``/``sigma`` shapes (or only one of them).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference batch {path!r} does not exist.")
  with np.load(path, allow_pickle=False) as data:
    key = next((k for k in _IMAGE_KEYS if k in data.files), None)
    if key is None:
      raise ValueError(f"{path!r} holds {data.files}; expected images under one of "
                       f"{_IMAGE_KEYS} (ADM reference batches use 'arr_0').")
    images = data[key]
    stats = {k: data[k] if k in data.files else None
             for k in ("mu", "sigma", "mu_s", "sigma_s")}
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{path!r}: '{key}' must be uint8 (n, h, w, 1 or 3) images, got "
                     f"{images.dtype} {images.shape}.")
  for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
    mu, sigma = stats[mu_key], stats[sigma_key]
    if (mu is None) != (sigma is None):
      raise ValueError(f"{path!r} has only one of '{mu_key}' and '{sigma_key}'; store both or "
                       "neither.")
    if mu is not None and (mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0])):
      raise ValueError(f"{path!r}: '{mu_key}' {mu.shape} and '{sigma_key}' {sigma.shape} must be "
                       "(d,) and (d, d).")
  return ReferenceBatch(images=images, mu=stats["mu"], sigma=stats["sigma"],
                        spatial_mu=stats["mu_s"], spatial_sigma=stats["sigma_s"])
