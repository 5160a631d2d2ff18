"""A small digits classifier: the feature network for FID / IS / precision-recall on digits.

InceptionV3 features mean nothing on 8x8 grey digits, so the default dataset gets its own
classifier, as MNIST-scale diffusion papers do: an MLP (64 -> 256 -> 128 -> 10) trained with
optax on scikit-learn's ``load_digits`` (values 0..16 scaled to [-1, 1]) with the project's
fixed split (``train_test_split(stratify=labels, random_state=0, test_size=297)``: 1500 train,
297 test; the same split as ``data.digits``). Training takes seconds on a CPU and reaches
~97% held-out accuracy. Its 128-d penultimate activations are the "pool" features and its
10 logits feed the Inception Score.

Inputs are (n, 8, 8, 1) (or (n, 8, 8)) images: uint8 in [0, 255] (as sample files store them)
or float in [-1, 1] (the model's own range; clipped).
"""
from __future__ import annotations

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
NUM_TEST = 297
SPLIT_SEED = 0
HIDDEN = (256, 128)


class DigitsClassifier(nn.Module):
  """MLP on flattened 8x8 images; returns (penultimate (n, hidden[-1]), logits (n, 10))."""
  hidden: tuple[int, ...] = HIDDEN
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    h = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h))
    return h, nn.Dense(self.num_classes, name="logits")(h)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The fixed digits split: x_train (1500, 8, 8, 1), y_train, x_test (297, 8, 8, 1), y_test.

  Images are float32 in [-1, 1] (``v / 8 - 1`` of the 0..16 values); labels int32.
  """
  # Imported here: scikit-learn is only needed to train, and mdm_jax imports without it.
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, labels, test_size=NUM_TEST, stratify=labels, random_state=SPLIT_SEED)
  return x_train, y_train, x_test, y_test


def to_classifier_input(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] images (n, 8, 8[, 1]) -> float32 (n, 8, 8, 1) in [-1, 1]."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"digits images must be (n, 8, 8) or (n, 8, 8, 1), got {images.shape}.")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"digits images must be uint8 or float, got {images.dtype}.")
  if np.abs(images).max(initial=0.0) > 2.0:
    raise ValueError("float digits images must lie in [-1, 1] (the model's range); got values "
                     f"up to {np.abs(images).max():.3g}. Pass uint8 for [0, 255] data.")
  return np.clip(images, -1.0, 1.0).astype(np.float32)


def _hidden_from_params(params) -> tuple[int, ...]:
  try:
    n = sum(1 for k in params if k.startswith("hidden_"))
    return tuple(int(params[f"hidden_{i}"]["kernel"].shape[1]) for i in range(n))
  except (KeyError, AttributeError, TypeError, IndexError) as e:
    raise ValueError("digits classifier params must be {'hidden_0': {'kernel', 'bias'}, ..., "
                     "'logits': {...}} as returned by train_digits_classifier.") from e


def train_digits_classifier(seed: int = 0, epochs: int = 40, batch_size: int = 100,
                            learning_rate: float = 1e-3, weight_decay: float = 1e-4):
  """Trains ``DigitsClassifier`` on the 1500 training digits; deterministic given ``seed``.

  Returns:
    The Flax ``params`` dict (use with ``DigitsFeatureExtractor`` or ``digits_accuracy``).
  """
  x_train, y_train, _, _ = load_digits_split()
  model = DigitsClassifier()
  init_rng, shuffle_rng = jax.random.split(jax.random.key(seed))
  params = model.init(init_rng, jnp.zeros((1,) + IMAGE_SHAPE))["params"]
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  steps_per_epoch = x_train.shape[0] // batch_size
  x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)

  def loss_fn(p, x, y):
    _, logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, idx):
    p, opt_state = carry
    grads = jax.grad(loss_fn)(p, x_all[idx], y_all[idx])
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  @jax.jit
  def train(p, rng):
    perms = jax.vmap(lambda r: jax.random.permutation(r, x_all.shape[0]))(
        jax.random.split(rng, epochs))
    batches = perms[:, :steps_per_epoch * batch_size].reshape(-1, batch_size)
    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), batches)
    return p

  return train(params, shuffle_rng)


@jax.jit
def _apply(params, x):
  return DigitsClassifier(hidden=_hidden_from_params(params)).apply({"params": params}, x)


def digits_accuracy(params, images: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy of the classifier on ``images`` (see ``to_classifier_input``)."""
  _, logits = _apply(params, jnp.asarray(to_classifier_input(images)))
  return float(np.mean(np.asarray(logits).argmax(axis=-1) == np.asarray(labels)))


def digits_predict(params, images: np.ndarray) -> np.ndarray:
  """int32 (n,): the digit the classifier reads in each image (see ``to_classifier_input``)."""
  _, logits = _apply(params, jnp.asarray(to_classifier_input(images)))
  return np.asarray(logits).argmax(axis=-1).astype(np.int32)


def save_digits_classifier(params, path: str) -> None:
  """Writes params to ``path`` (.npz) with '/'-joined keys, e.g. ``hidden_0/kernel``."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  with epath.Path(path).open("wb") as f:  # A file object keeps np.savez from adding '.npz'.
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})


def load_digits_classifier(path: str):
  """Reads params written by ``save_digits_classifier``; validates their structure."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"digits classifier {path!r} does not exist; train one with "
                            "train_digits_classifier() and save_digits_classifier().")
  with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
    params = traverse_util.unflatten_dict({k: jnp.asarray(data[k]) for k in data.files}, sep="/")
  hidden = _hidden_from_params(params)
  expected = jax.eval_shape(DigitsClassifier(hidden=hidden).init, jax.random.key(0),
                            jnp.zeros((1,) + IMAGE_SHAPE))["params"]
  got = jax.tree.map(lambda a: a.shape, params)
  want = jax.tree.map(lambda a: a.shape, expected)
  if got != want:
    raise ValueError(f"{path!r} does not hold digits classifier params: expected shapes {want}, "
                     f"got {got}.")
  return params


class DigitsFeatureExtractor:
  """``FeatureExtractor``: penultimate features (n, 128) and logits (n, 10) of digits images."""

  def __init__(self, params):
    _hidden_from_params(params)
    self.params = params

  @classmethod
  def from_file(cls, path: str) -> DigitsFeatureExtractor:
    return cls(load_digits_classifier(path))

  def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pool, logits = _apply(self.params, jnp.asarray(to_classifier_input(images)))
    return np.asarray(pool, np.float32), np.asarray(logits, np.float32)
