"""Reading ADM-style reference batches (``VIRTUAL_imagenet256_labeled.npz`` and friends).

ADM's evaluator takes an ``.npz`` whose ``arr_0`` holds uint8 NHWC images and which may carry
precomputed InceptionV3 pool statistics ``mu`` (2048,) and ``sigma`` (2048, 2048) (the
spatial ``mu_s``/``sigma_s`` for sFID are read too when present). Sample files written by
``experiments.sample`` use ``images`` instead of ``arr_0``; both names are accepted.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile

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


def _headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Each array's (shape, dtype) in the ``.npz`` at ``path``, from the ``.npy`` headers alone
  (a 50K-image reference batch is ~10 GB: nothing of its data is read)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} does not exist: pass the path of an existing .npz.")
  try:
    with zipfile.ZipFile(path) as z:
      out = {}
      for name in z.namelist():
        if not name.endswith(".npy"):
          continue
        with z.open(name) as f:
          read = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(f) == (1, 0)
                  else np.lib.format.read_array_header_2_0)
          shape, _, dtype = read(f)
        out[name[:-len(".npy")]] = (tuple(shape), np.dtype(dtype))
      return out
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path!r} is not a readable .npz ({type(e).__name__}: {e}); is it "
                     "truncated? Write it again (np.savez).") from None


def _check(path: str, files, image_shape, stat_shapes) -> str:
  """The image key; raises on what ``load_reference_batch`` documents as bad."""
  key = next((k for k in _IMAGE_KEYS if k in files), None)
  if key is None:
    raise ValueError(f"{path!r} holds {list(files)}; expected images under one of "
                     f"{_IMAGE_KEYS} (ADM reference batches use 'arr_0').")
  shape, dtype = image_shape(key)
  if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f"{path!r}: '{key}' must be uint8 (n, h, w, 1 or 3) images, got "
                     f"{dtype} {shape}.")
  for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
    mu, sigma = stat_shapes(mu_key), stat_shapes(sigma_key)
    if (mu is None) != (sigma is None):
      raise ValueError(f"{path!r} has only one of '{mu_key}' and '{sigma_key}'; store both or "
                       "neither.")
    if mu is not None and (len(mu) != 1 or sigma != (mu[0], mu[0])):
      raise ValueError(f"{path!r}: '{mu_key}' {mu} and '{sigma_key}' {sigma} must be "
                       "(d,) and (d, d).")
  return key


def check_reference_batch(path: str) -> tuple[int, ...]:
  """Checks an ``.npz`` as ``load_reference_batch`` would, reading only its arrays' headers;
  returns the images' shape (n, h, w, c). Same errors as ``load_reference_batch``, and
  ValueError for a file that is not a readable ``.npz``."""
  headers = _headers(path)
  key = _check(path, headers, lambda k: headers[k],
               lambda k: headers[k][0] if k in headers else None)
  return headers[key][0]


def load_reference_batch(path: str) -> ReferenceBatch:
  """Loads an ADM reference-batch ``.npz``; validates the images and statistics.

  Raises:
    FileNotFoundError: no such file. ValueError: no image array, images not uint8 NHWC, or
    inconsistent ``mu``/``sigma`` shapes (or only one of them).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference batch {path!r} does not exist.")
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files if k in (*_IMAGE_KEYS, "mu", "sigma", "mu_s",
                                                      "sigma_s")}
  key = _check(path, arrays, lambda k: (arrays[k].shape, arrays[k].dtype),
               lambda k: arrays[k].shape if k in arrays else None)
  images = arrays[key]
  stats = {k: arrays.get(k) for k in ("mu", "sigma", "mu_s", "sigma_s")}
  return ReferenceBatch(images=images, mu=stats["mu"], sigma=stats["sigma"],
                        spatial_mu=stats["mu_s"], spatial_sigma=stats["sigma_s"])
