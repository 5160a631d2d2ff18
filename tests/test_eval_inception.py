"""InceptionV3 feature extractor: weight-file structure, loading errors, output shapes."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from mdm_jax.evaluation import feature_extractor
from mdm_jax.evaluation import inception
from mdm_jax.evaluation import reference_batch

# torchvision.models.inception_v3 has 27,161,264 parameters; its auxiliary head has 3,326,696
# (768->128 1x1 conv + BN, 128->768 5x5 conv + BN, 768->1000 fc). pytorch-fid's fc has 1008
# classes: 8 more rows of 2048 weights + 1 bias each.
_TORCHVISION_PARAMS_WITHOUT_AUX = 27_161_264 - 3_326_696
_FID_PARAMS = _TORCHVISION_PARAMS_WITHOUT_AUX + 8 * (2048 + 1)


def _random_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in shapes.items():
    if name.endswith("running_var"):
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name.endswith("conv.weight"):
      fan_in = shape[1] * shape[2] * shape[3]
      out[name] = (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)
    else:
      out[name] = (0.1 * rng.normal(size=shape)).astype(np.float32)
    if name.endswith("bn.running_var"):
      out[name.replace("running_var", "num_batches_tracked")] = np.array(7)  # ignored
  return out


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  shapes = inception.inception_weight_shapes()
  path = tmp_path_factory.mktemp("inception") / "pt_inception.npz"
  np.savez(path, **_random_state_dict(shapes))
  return str(path), shapes


def test_weight_shapes_match_torchvision_architecture(weights_file):
  _, shapes = weights_file
  learnable = sum(int(np.prod(s)) for k, s in shapes.items()
                  if not k.endswith(("running_mean", "running_var")))
  assert learnable == _FID_PARAMS
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch3x3dbl_1.conv.weight"] == (448, 2048, 1, 1)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)


def test_extractor_loads_random_weights_and_gives_pool_and_logits(weights_file):
  path, _ = weights_file
  extractor = inception.InceptionFeatureExtractor(path)
  assert isinstance(extractor, feature_extractor.FeatureExtractor)
  images = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
  pool, logits = extractor.features(images)
  assert pool.shape == (1, inception.POOL_FEATURES) and logits.shape == (1, 1008)
  assert np.isfinite(pool).all() and np.isfinite(logits).all()
  assert (pool >= 0).all()  # average of ReLU outputs
  with pytest.raises(ValueError, match="uint8"):
    extractor.features(images.astype(np.float32))


def test_preprocessing_maps_uint8_range_to_minus_one_one():
  white = np.full((2, 5, 7, 1), 255, np.uint8)
  x = np.asarray(inception.preprocess_images(white))
  assert x.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(x, 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(inception.preprocess_images(white * 0)), -1.0)


def test_safetensors_weights_and_torchvision_head_load(weights_file, tmp_path):
  _, shapes = weights_file
  state = _random_state_dict(shapes, seed=1)
  state["fc.weight"] = state["fc.weight"][:1000]
  state["fc.bias"] = state["fc.bias"][:1000]
  state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)  # ignored
  path = tmp_path / "torchvision.safetensors"
  safetensors_numpy.save_file(state, str(path))
  model, variables = inception.load_inception(str(path))
  assert model.num_classes == 1000 and not model.fid_variant
  np.testing.assert_array_equal(  # OIHW -> HWIO
      variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"],
      state["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch1x1"]["bn"]["var"],
                                state["Mixed_7c.branch1x1.bn.running_var"])


def test_pickled_weights_are_refused_unread(tmp_path):
  path = tmp_path / "w.pkl"
  with open(path, "wb") as f:
    pickle.dump(_Boom(), f)  # would raise on load, were it unpickled
  with pytest.raises(ValueError, match="not loaded .unpickling runs arbitrary code"):
    inception.load_inception(str(path))


class _Boom:
  def __reduce__(self):
    return (_explode, ())


def _explode():
  raise AssertionError("a pickle was loaded")


def test_load_errors_name_what_was_expected(weights_file, tmp_path):
  _, shapes = weights_file
  with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
    inception.load_inception(str(tmp_path / "absent.npz"))
  state = _random_state_dict(shapes, seed=2)
  del state["Mixed_6a.branch3x3.conv.weight"]
  state["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  state["extra.weight"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "bad.npz", **state)
  with pytest.raises(ValueError) as err:
    inception.load_inception(str(tmp_path / "bad.npz"))
  message = str(err.value)
  assert "missing 1 entries (Mixed_6a.branch3x3.conv.weight)" in message
  assert "Mixed_5b.branch1x1.conv.weight: expected (64, 192, 1, 1), got (64, 192, 3, 3)" in message
  assert "unexpected 1 entries (extra.weight)" in message
  np.savez(tmp_path / "nofc.npz", x=np.zeros(2))
  with pytest.raises(ValueError, match="fc.weight"):
    inception.load_inception(str(tmp_path / "nofc.npz"))


def test_load_reference_batch(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  mu, sigma = np.arange(3.0), np.eye(3)
  np.savez(tmp_path / "ref.npz", arr_0=images, mu=mu, sigma=sigma)
  batch = reference_batch.load_reference_batch(str(tmp_path / "ref.npz"))
  np.testing.assert_array_equal(batch.images, images)
  np.testing.assert_array_equal(batch.mu, mu)
  np.testing.assert_array_equal(batch.sigma, sigma)
  assert batch.spatial_mu is None
  np.savez(tmp_path / "plain.npz", arr_0=images)
  assert reference_batch.load_reference_batch(str(tmp_path / "plain.npz")).mu is None
  np.savez(tmp_path / "float.npz", arr_0=images.astype(np.float32))
  with pytest.raises(ValueError, match="uint8"):
    reference_batch.load_reference_batch(str(tmp_path / "float.npz"))
  np.savez(tmp_path / "half.npz", arr_0=images, mu=mu)
  with pytest.raises(ValueError, match="only one of"):
    reference_batch.load_reference_batch(str(tmp_path / "half.npz"))
  with pytest.raises(FileNotFoundError):
    reference_batch.load_reference_batch(str(tmp_path / "absent.npz"))
