"""A reference set's feature statistics, computed once and cached as an ``.npz``.

FID needs the reference set's Gaussian statistics (mu, sigma) and precision/recall its
features; for ADM's protocol the reference is 10K-50K images, so computing its InceptionV3
features on every ``evaluate`` call would cost more than scoring the samples. The cache file
holds ``features`` (n, d) float32, ``mu`` (d,) and ``sigma`` (d, d) float64, plus the key it
was computed for (dataset, split, count, image size and the feature extractor's weights
digest, spelled out by the caller) so a stale or foreign file is refused, not silently used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Callable, Iterable

from etils import epath
import numpy as np

from mdm_jax.evaluation import image_metrics


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
  """features (n, d) float32; mu (d,) and sigma (d, d) float64."""
  features: np.ndarray
  mu: np.ndarray
  sigma: np.ndarray

  @property
  def count(self) -> int:
    return int(self.features.shape[0])


def file_digest(path, length: int = 16) -> str:
  """The first ``length`` hex digits of the file's SHA-256 (read in 1 MiB blocks)."""
  h = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()[:length]


def stats_from_batches(extract: Callable[[np.ndarray], np.ndarray],
                       batches: Iterable[np.ndarray], *, mu=None, sigma=None) -> ReferenceStats:
  """Features of every batch (``extract``: images -> (b, d) features), concatenated, and
  their Gaussian statistics (or the given ``mu``/``sigma``, e.g. an ADM batch's own)."""
  feats = [np.asarray(extract(b), np.float32) for b in batches]
  if not feats:
    raise ValueError("the reference set is empty: no images to compute statistics from")
  features = np.concatenate(feats)
  if mu is None:
    mu, sigma = image_metrics.gaussian_statistics(features)
  return ReferenceStats(features, np.asarray(mu, np.float64), np.asarray(sigma, np.float64))


def load(path, key: str) -> ReferenceStats | None:
  """The cached statistics at ``path`` if it exists and was computed for ``key``; else None."""
  path = epath.Path(path)
  if not path.exists():
    return None
  with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
    if "key" not in data.files or str(data["key"]) != key:
      return None
    stats = ReferenceStats(data["features"], data["mu"], data["sigma"])
  d = stats.features.shape[1]
  if stats.mu.shape != (d,) or stats.sigma.shape != (d, d):
    raise ValueError(f"{os.fspath(path)}: features {stats.features.shape}, mu {stats.mu.shape} "
                     f"and sigma {stats.sigma.shape} do not fit together; delete the file to "
                     "recompute it")
  return stats


def save(path, key: str, stats: ReferenceStats) -> None:
  """Writes the cache atomically (a temporary file renamed into place)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.savez(buf, key=np.asarray(key), features=stats.features, mu=stats.mu, sigma=stats.sigma)
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  tmp.write_bytes(buf.getvalue())
  tmp.replace(path)


def cached(path, key: str, compute: Callable[[], ReferenceStats]) -> tuple[ReferenceStats, bool]:
  """(statistics, read_from_cache): those cached at ``path`` for ``key``, or ``compute()``'s,
  then cached there (a file for another key is replaced)."""
  stats = load(path, key)
  if stats is not None:
    return stats, True
  stats = compute()
  save(path, key, stats)
  return stats, False
