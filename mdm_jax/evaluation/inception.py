"""InceptionV3 feature extractor for FID / IS / precision-recall (pytorch-fid / ADM network).

The architecture is torchvision's InceptionV3 without the auxiliary head, with pytorch-fid's FID
blocks (``fid_variant=True``: average pools that exclude padding in Mixed_5*/6*/7b, a max pool
in Mixed_7c), i.e. the port of the TF "2015-12-05" graph that FID and ADM's evaluator use. It
returns the 2048-d ``pool_3`` features and the ``fc`` logits (1008 classes for the FID
weights, 1000 for torchvision's ImageNet weights).

Nothing is downloaded: weights come from a user-supplied ``.npz`` (or ``.safetensors``, with the
``safetensors`` package installed) whose keys and layouts are those of the PyTorch
``state_dict`` (``Conv2d_1a_3x3.conv.weight`` (O, I, kh, kw), ``*.bn.weight/bias/running_mean/running_var``, ``fc.weight`` (classes, 2048),
``fc.bias``). Where PyTorch and pytorch-fid are installed, produce the file once with::

    import numpy as np
    from pytorch_fid.inception import fid_inception_v3
    net = fid_inception_v3()   # fetches pt_inception-2015-12-05-6726825d.pth
    np.savez("pt_inception.npz", **{k: v.numpy() for k, v in net.state_dict().items()})

Pickle files are refused: loading one runs whatever code it holds. ``num_batches_tracked`` and
``AuxLogits.*`` entries are ignored. Preprocessing is
pytorch-fid's: uint8 -> [0, 1], bilinear resize to 299x299 (half-pixel centres, no
antialiasing, as ``F.interpolate(align_corners=False)``), then ``2x - 1``. Grayscale images are
repeated to 3 channels. Features match the TF-graph evaluator closely but not bit-for-bit (its
resize differs slightly), as with pytorch-fid itself.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

INPUT_SIZE = 299
POOL_FEATURES = 2048
FID_NUM_CLASSES = 1008
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_PREFIXES = ("AuxLogits.",)
# (flax collection, flax leaf name) -> PyTorch leaf name.
_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _pad(ph: int, pw: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((ph, ph), (pw, pw))


class _BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm(eps=1e-3, inference statistics) -> ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = "VALID"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=self.padding,
                use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool(x: jnp.ndarray, count_include_pad: bool) -> jnp.ndarray:
  return nn.avg_pool(x, (3, 3), (1, 1), padding=_pad(1, 1), count_include_pad=count_include_pad)


def _max_pool_s2(x: jnp.ndarray) -> jnp.ndarray:
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class _InceptionA(nn.Module):
  pool_features: int
  count_include_pad: bool

  @nn.compact
  def __call__(self, x):
    b1 = _BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = _BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = _BasicConv(64, (5, 5), padding=_pad(2, 2), name="branch5x5_2")(b5)
    b3 = _BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = _BasicConv(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(b3)
    b3 = _BasicConv(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_3")(b3)
    bp = _BasicConv(self.pool_features, (1, 1), name="branch_pool")(
        _avg_pool(x, self.count_include_pad))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class _InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = _BasicConv(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = _BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = _BasicConv(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = _BasicConv(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_s2(x)], axis=-1)


class _InceptionC(nn.Module):
  channels_7x7: int
  count_include_pad: bool

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = _BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = _BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = _BasicConv(c7, (1, 7), padding=_pad(0, 3), name="branch7x7_2")(b7)
    b7 = _BasicConv(192, (7, 1), padding=_pad(3, 0), name="branch7x7_3")(b7)
    bd = _BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = _BasicConv(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_2")(bd)
    bd = _BasicConv(c7, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_3")(bd)
    bd = _BasicConv(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_4")(bd)
    bd = _BasicConv(192, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_5")(bd)
    bp = _BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x, self.count_include_pad))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class _InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = _BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = _BasicConv(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
    b7 = _BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = _BasicConv(192, (1, 7), padding=_pad(0, 3), name="branch7x7x3_2")(b7)
    b7 = _BasicConv(192, (7, 1), padding=_pad(3, 0), name="branch7x7x3_3")(b7)
    b7 = _BasicConv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_s2(x)], axis=-1)


class _InceptionE(nn.Module):
  pool: str  # "avg_exclude_pad" | "avg_include_pad" | "max"

  @nn.compact
  def __call__(self, x):
    b1 = _BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = _BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        _BasicConv(384, (1, 3), padding=_pad(0, 1), name="branch3x3_2a")(b3),
        _BasicConv(384, (3, 1), padding=_pad(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = _BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = _BasicConv(384, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        _BasicConv(384, (1, 3), padding=_pad(0, 1), name="branch3x3dbl_3a")(bd),
        _BasicConv(384, (3, 1), padding=_pad(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=_pad(1, 1))
    else:
      pooled = _avg_pool(x, count_include_pad=self.pool == "avg_include_pad")
    bp = _BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """InceptionV3 trunk + fc; ``__call__`` maps (n, 299, 299, 3) in [-1, 1] to (pool, logits).

  Attributes:
    num_classes: fc outputs; 1008 for the FID (TF 2015-12-05) weights, 1000 for torchvision.
    fid_variant: pytorch-fid's FID blocks (True) or torchvision's stock blocks (False).
  """
  num_classes: int = FID_NUM_CLASSES
  fid_variant: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    include_pad = not self.fid_variant
    x = _BasicConv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = _BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = _BasicConv(64, (3, 3), padding=_pad(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_s2(x)
    x = _BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = _BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_s2(x)
    x = _InceptionA(32, include_pad, name="Mixed_5b")(x)
    x = _InceptionA(64, include_pad, name="Mixed_5c")(x)
    x = _InceptionA(64, include_pad, name="Mixed_5d")(x)
    x = _InceptionB(name="Mixed_6a")(x)
    x = _InceptionC(128, include_pad, name="Mixed_6b")(x)
    x = _InceptionC(160, include_pad, name="Mixed_6c")(x)
    x = _InceptionC(160, include_pad, name="Mixed_6d")(x)
    x = _InceptionC(192, include_pad, name="Mixed_6e")(x)
    x = _InceptionD(name="Mixed_7a")(x)
    x = _InceptionE("avg_exclude_pad" if self.fid_variant else "avg_include_pad",
                    name="Mixed_7b")(x)
    x = _InceptionE("max" if self.fid_variant else "avg_include_pad", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(pool)
    return pool, logits


def preprocess_images(images: jnp.ndarray) -> jnp.ndarray:
  """(n, h, w, 1 or 3) uint8 -> (n, 299, 299, 3) float32 in [-1, 1], as pytorch-fid."""
  x = images.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear",
                       antialias=False)
  return 2.0 * x - 1.0


def _flax_to_torch(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
  collection, *modules, leaf = path
  name = ".".join(modules + [_TORCH_LEAF[(collection, leaf)]])
  if leaf == "kernel":
    shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
  return name, tuple(shape)


def _torch_to_flax_array(array: np.ndarray, leaf: str) -> np.ndarray:
  if leaf != "kernel":
    return array
  return array.T if array.ndim == 2 else array.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _flax_shapes(model: InceptionV3) -> dict[tuple[str, ...], tuple[int, ...]]:
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(variables).items()}


def inception_weight_shapes(num_classes: int = FID_NUM_CLASSES, fid_variant: bool = True
                            ) -> dict[str, tuple[int, ...]]:
  """PyTorch ``state_dict`` names -> shapes a weights file must hold (ignored keys excluded)."""
  model = InceptionV3(num_classes=num_classes, fid_variant=fid_variant)
  return dict(_flax_to_torch(path, shape) for path, shape in _flax_shapes(model).items())


def _read_weights_file(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"InceptionV3 weights file {path!r} does not exist. Nothing is downloaded: convert "
        "pytorch-fid's pt_inception-2015-12-05 state_dict to .npz once (see "
        "mdm_jax/evaluation/inception.py) and pass its path.")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # optional: only for this format
    except ImportError as e:
      raise ImportError(f"{path!r} is a .safetensors file: `pip install safetensors` to read it, "
                        "or convert it to .npz.") from e
    return dict(load_file(path))
  if path.endswith((".pkl", ".pickle", ".pt", ".pth")):
    raise ValueError(
        f"{path!r}: pickled weights are not loaded (unpickling runs arbitrary code). Convert "
        "the state_dict once where you trust the file: np.savez('w.npz', **{k: v.numpy() for "
        "k, v in state_dict.items()}).")
  raise ValueError(f"InceptionV3 weights must be a .npz or .safetensors file, got {path!r}.")


def _summarise(items: list[str], limit: int = 8) -> str:
  more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
  return ", ".join(items[:limit]) + more


def load_inception(path: str, fid_variant: bool | None = None
                   ) -> tuple[InceptionV3, dict[str, Any]]:
  """Builds InceptionV3 and its variables from a PyTorch-layout weights file.

  Args:
    path: .npz or .safetensors of PyTorch ``state_dict`` names -> arrays (module docstring).
    fid_variant: FID blocks or torchvision blocks; by default FID iff ``fc`` has 1008 classes.

  Returns:
    (model, variables) for ``model.apply(variables, x)``.

  Raises:
    FileNotFoundError: no such file. ValueError: missing, unexpected or mis-shaped entries
    (each named with the shape expected).
  """
  raw = _read_weights_file(path)
  raw = {k: v for k, v in raw.items()
         if not k.endswith(_IGNORED_SUFFIXES) and not k.startswith(_IGNORED_PREFIXES)}
  if "fc.weight" not in raw or np.ndim(raw["fc.weight"]) != 2:
    raise ValueError(f"{path!r} has no 2-D 'fc.weight' (expected (1008 or 1000, "
                     f"{POOL_FEATURES})); is it an InceptionV3 state_dict?")
  num_classes = int(raw["fc.weight"].shape[0])
  if fid_variant is None:
    fid_variant = num_classes == FID_NUM_CLASSES
  model = InceptionV3(num_classes=num_classes, fid_variant=fid_variant)
  expected = {}
  for flax_path, shape in _flax_shapes(model).items():
    name, torch_shape = _flax_to_torch(flax_path, shape)
    expected[name] = (flax_path, torch_shape)
  missing = sorted(set(expected) - set(raw))
  unexpected = sorted(set(raw) - set(expected))
  wrong = [f"{k}: expected {expected[k][1]}, got {tuple(raw[k].shape)}"
           for k in sorted(set(expected) & set(raw)) if tuple(raw[k].shape) != expected[k][1]]
  problems = []
  if missing:
    problems.append(f"missing {len(missing)} entries ({_summarise(missing)})")
  if unexpected:
    problems.append(f"unexpected {len(unexpected)} entries ({_summarise(unexpected)})")
  if wrong:
    problems.append(f"wrong shapes ({_summarise(wrong)})")
  if problems:
    raise ValueError(
        f"{path!r} is not an InceptionV3 state_dict (PyTorch names and layouts, fc with "
        f"{num_classes} classes): " + "; ".join(problems) + ". Expected names/shapes are listed "
        "by mdm_jax.evaluation.inception.inception_weight_shapes().")
  flat = {flax_path: jnp.asarray(_torch_to_flax_array(raw[name], flax_path[-1]), jnp.float32)
          for name, (flax_path, _) in expected.items()}
  return model, traverse_util.unflatten_dict(flat)


class InceptionFeatureExtractor:
  """``FeatureExtractor`` giving InceptionV3 pool_3 features (n, 2048) and logits (n, classes).

  Images are uint8 (n, h, w, 1 or 3), any size (resized to 299 inside).
  """

  def __init__(self, weights_path: str, fid_variant: bool | None = None):
    self.model, self.variables = load_inception(weights_path, fid_variant)
    self._forward = jax.jit(lambda v, x: self.model.apply(v, preprocess_images(x)))

  def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"InceptionV3 expects uint8 images of shape (n, h, w, 1 or 3), got "
                       f"{images.dtype} {images.shape}; convert with "
                       "np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8).")
    pool, logits = self._forward(self.variables, images)
    return np.asarray(pool, np.float32), np.asarray(logits, np.float32)
