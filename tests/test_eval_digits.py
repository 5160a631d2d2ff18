"""The digits feature classifier: held-out accuracy, save/load, feature extractor contract."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets, model_selection

from mdm_jax.evaluation import digits_classifier
from mdm_jax.evaluation import feature_extractor
from mdm_jax.evaluation import image_metrics


@pytest.fixture(scope="module")
def params():
  return digits_classifier.train_digits_classifier(seed=0)


@pytest.fixture(scope="module")
def held_out():
  # The split, re-derived here from the spec: stratified, random_state=0, 297 test images.
  digits = datasets.load_digits()
  _, x_test, _, y_test = model_selection.train_test_split(
      digits.images, digits.target, test_size=297, stratify=digits.target, random_state=0)
  return x_test, y_test


def test_split_is_the_specified_one(held_out):
  x_train, y_train, x_test, y_test = digits_classifier.load_digits_split()
  assert x_train.shape == (1500, 8, 8, 1) and x_test.shape == (297, 8, 8, 1)
  np.testing.assert_allclose(x_test[..., 0], held_out[0] / 8.0 - 1.0, atol=1e-6)
  np.testing.assert_array_equal(y_test, held_out[1])
  assert x_train.min() == -1.0 and x_train.max() == 1.0
  assert np.bincount(y_train).min() >= 145  # stratified: ~150 per class


def test_classifier_reaches_95_percent_on_held_out_digits(params, held_out):
  x_test, y_test = held_out
  extractor = digits_classifier.DigitsFeatureExtractor(params)
  _, logits = extractor.features(x_test / 8.0 - 1.0)  # float (n, 8, 8) in [-1, 1]
  accuracy = np.mean(logits.argmax(-1) == y_test)
  assert accuracy >= 0.95, accuracy
  # uint8 [0, 255] input (how sample files store digits) classifies the same.
  as_uint8 = np.round(x_test * (255.0 / 16.0)).astype(np.uint8)[..., None]
  assert digits_classifier.digits_accuracy(params, as_uint8, y_test) >= 0.95


def test_save_load_roundtrip_and_feature_shapes(params, held_out, tmp_path):
  path = str(tmp_path / "digits_classifier.npz")
  digits_classifier.save_digits_classifier(params, path)
  extractor = digits_classifier.DigitsFeatureExtractor.from_file(path)
  assert isinstance(extractor, feature_extractor.FeatureExtractor)
  images = held_out[0][:7, :, :, None] / 8.0 - 1.0
  pool, logits = extractor.features(images)
  assert pool.shape == (7, 128) and logits.shape == (7, 10)
  ref_pool, ref_logits = digits_classifier.DigitsFeatureExtractor(params).features(images)
  np.testing.assert_array_equal(pool, ref_pool)
  np.testing.assert_array_equal(logits, ref_logits)
  np.savez(tmp_path / "wrong.npz", **{"hidden_0/kernel": np.zeros((64, 8))})
  with pytest.raises(ValueError):
    digits_classifier.load_digits_classifier(str(tmp_path / "wrong.npz"))


def test_features_separate_real_digits_from_noise(params):
  x_train, _, x_test, _ = digits_classifier.load_digits_split()
  extractor = digits_classifier.DigitsFeatureExtractor(params)
  train_pool, _ = feature_extractor.extract_features(extractor, x_train[:600], batch_size=256)
  test_pool, test_logits = extractor.features(x_test)
  noise = np.random.default_rng(0).uniform(-1, 1, x_test.shape).astype(np.float32)
  noise_pool, _ = extractor.features(noise)
  fid_real = image_metrics.frechet_distance_from_features(train_pool, test_pool)
  fid_noise = image_metrics.frechet_distance_from_features(train_pool, noise_pool)
  assert fid_real * 10 < fid_noise
  probs = np.exp(test_logits - test_logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  assert image_metrics.inception_score(probs) > 8.0  # confident and class-balanced


def test_rejects_wrong_image_scale():
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    digits_classifier.to_classifier_input(np.full((2, 8, 8), 16.0))
  with pytest.raises(ValueError, match="8, 8"):
    digits_classifier.to_classifier_input(np.zeros((2, 28, 28, 1), np.uint8))
