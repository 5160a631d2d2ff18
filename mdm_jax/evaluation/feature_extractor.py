"""The interface image metrics use to turn images into classifier features.

Two implementations ship: ``inception.InceptionFeatureExtractor`` (pytorch-fid / ADM
InceptionV3, for natural images) and ``digits_classifier.DigitsFeatureExtractor`` (the small
classifier trained on the default 8x8 digits dataset). FID and precision/recall read the pool
features, the Inception Score reads ``softmax(logits)``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class FeatureExtractor(Protocol):
  """Maps a batch of images to (pool_features, logits)."""

  def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images: (n, h, w, c) uint8 (or the float range the extractor documents).

    Returns:
      pool_features (n, d) and logits (n, num_classes), numpy float32.
    """
    ...


def extract_features(extractor: FeatureExtractor, images: np.ndarray, batch_size: int = 250
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Runs ``extractor.features`` over ``images`` (n, h, w, c) in batches; concatenates outputs.

  Returns:
    pool_features (n, d) and logits (n, num_classes).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"images must be a non-empty (n, h, w, c) batch, got shape {images.shape}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  pools, logits = [], []
  for start in range(0, images.shape[0], batch_size):
    pool, logit = extractor.features(images[start:start + batch_size])
    pools.append(np.asarray(pool))
    logits.append(np.asarray(logit))
  return np.concatenate(pools), np.concatenate(logits)
