"""Workdir files on an object store: every file the trainer, sampler and evaluator write outside
orbax (tokenizer.model, metrics.jsonl, samples, the digits classifier, the existence checks) goes
through `etils.epath`, tested on a `gs://` workdir served offline by an in-memory fsspec
filesystem registered for the `gs`/`gcs` protocols (what epath's fsspec backend opens for gs://
when TensorFlow is absent; gcsfs is what it opens for real). Each file is read back from that
filesystem's store directly, not through the code under test.

Not covered offline: orbax writes the checkpoint arrays through tensorstore's own GCS driver, so
a whole training run on gs:// needs a real bucket.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import tempfile

from absl import logging
from etils import epath
from etils.epath import backend as epath_backend
import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import jax
import numpy as np
from PIL import Image
import pytest

from data import tokenizer as tokenizer_lib
from experiments import sample_io
from experiments import workdir as workdir_lib
from mdm_jax.evaluation import digits_classifier
from mdm_jax.training import metrics_log


class InMemoryGCS(MemoryFileSystem):
  """fsspec's memory filesystem answering gs:// (and gcs://) paths."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # a gcsfs option epath passes
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return MemoryFileSystem._strip_protocol(path)


@pytest.fixture
def bucket():
  """A fresh in-memory gs://bucket; returns its store ({'/bucket/path': file})."""
  # fsspec.registry is also the name of its read-only view; the module holds the dict.
  registry = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
  saved = {k: registry.get(k) for k in ("gs", "gcs")}
  for name in saved:
    fsspec.register_implementation(name, InMemoryGCS, clobber=True)
  clear = type(epath_backend.fsspec_backend)._get_filesystem.cache_clear
  clear()
  InMemoryGCS.store.clear()
  InMemoryGCS.pseudo_dirs[:] = [""]
  yield InMemoryGCS.store
  for name, impl in saved.items():
    if impl is None:
      registry.pop(name, None)
    else:
      registry[name] = impl
  clear()
  InMemoryGCS.store.clear()


def _bytes(store, path: str) -> bytes:
  return store[path.removeprefix("gs:/")].getvalue()


def test_gs_path_goes_to_the_fake_bucket(bucket):
  (epath.Path("gs://bucket/x") / "f.txt").write_text("hello")
  assert _bytes(bucket, "gs://bucket/x/f.txt") == b"hello"


def test_tokenizer_saves_and_loads_on_gs(bucket):
  texts = [f"a picture of the digit {w}" for w in ("one", "two", "three", "four")]
  tok = tokenizer_lib.Tokenizer.train(texts, "gs://bucket/run/tokenizer.model", 40)
  # The stored bytes are the model itself: a fresh SentencePiece model from them encodes alike.
  stored = tokenizer_lib.Tokenizer(_bytes(bucket, "gs://bucket/run/tokenizer.model"))
  loaded = tokenizer_lib.Tokenizer.load("gs://bucket/run/tokenizer.model")
  for text in texts + ["two four one"]:
    assert loaded.encode(text) == stored.encode(text) == tok.encode(text)
  with pytest.raises(ValueError, match="No tokenizer model at gs://bucket/none"):
    tokenizer_lib.Tokenizer.load("gs://bucket/none/tokenizer.model")


@pytest.mark.parametrize("where", ["gs", "local"])
def test_metrics_log_appends_across_restarts(where, bucket, tmp_path):
  workdir = "gs://bucket/run" if where == "gs" else str(tmp_path)
  path = workdir + "/metrics.jsonl"
  records = [{"step": i, "loss": 1.0 / i} for i in range(1, 6)]
  log = metrics_log.MetricsLog(workdir, start_step=0)
  for r in records[:3]:
    log.write(r["step"], {"loss": r["loss"]})
  log.close()
  log = metrics_log.MetricsLog(workdir, start_step=3)   # a resumed run reopens it
  for r in records[3:]:
    log.write(r["step"], {"loss": r["loss"]})
  log.close()
  if where == "gs":
    text = _bytes(bucket, path).decode()
  else:
    with open(path) as f:
      text = f.read()
  assert [json.loads(line) for line in text.splitlines()] == records


def test_samples_write_to_gs(bucket):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (5, 6, 6, 3)).astype(np.float32)
  sample_io.save_grid(images, "gs://bucket/run/samples/grid.png", nrow=5, upscale=2)
  sample_io.save_npz("gs://bucket/run/out.npz", images, labels=np.arange(5))
  sample_io.save_jsonl("gs://bucket/run/out.jsonl", [{"index": 0, "text": "a"}])
  sample_io.save_text("gs://bucket/run/samples/joint.txt", "0: a\n")
  png = Image.open(io.BytesIO(_bytes(bucket, "gs://bucket/run/samples/grid.png")))
  assert png.size == ((1 + 5 * 7) * 2, (1 + 7) * 2) and png.mode == "RGB"
  # First image, top-left pixel: pad 1, upscale 2 -> pixel (2, 2); [-1, 1] -> uint8 by hand.
  want = np.clip(np.round((images[0, 0, 0] + 1) * 127.5), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(png)[2, 2], want)
  with np.load(io.BytesIO(_bytes(bucket, "gs://bucket/run/out.npz"))) as f:
    np.testing.assert_array_equal(f["labels"], np.arange(5))
    assert f["images"].shape == (5, 6, 6, 3) and f["images"].dtype == np.uint8
  assert json.loads(_bytes(bucket, "gs://bucket/run/out.jsonl")) == {"index": 0, "text": "a"}
  assert _bytes(bucket, "gs://bucket/run/samples/joint.txt") == b"0: a\n"


def test_digits_classifier_roundtrip_on_gs(bucket):
  hidden = (8,)
  x = np.zeros((1,) + digits_classifier.IMAGE_SHAPE, np.float32)
  params = digits_classifier.DigitsClassifier(hidden=hidden).init(jax.random.key(0), x)["params"]
  path = "gs://bucket/run/digits_classifier.npz"
  digits_classifier.save_digits_classifier(params, path)
  with np.load(io.BytesIO(_bytes(bucket, path))) as f:
    assert len(f.files) == len(jax.tree.leaves(params))
  loaded = digits_classifier.load_digits_classifier(path)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_open_run_on_gs_without_checkpoints_says_so(bucket):
  epath.Path("gs://bucket/empty").mkdir(parents=True, exist_ok=True)
  with pytest.raises(FileNotFoundError, match="gs://bucket/empty has no checkpoints/"):
    workdir_lib.open_run("gs://bucket/empty")


def test_tensorboard_dir(tmp_path, monkeypatch):
  assert workdir_lib.tensorboard_dir(str(tmp_path)) == os.path.join(str(tmp_path), "tb")
  # Without tensorboardX's GCS client the events go to a local folder, with a warning.
  monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  got = workdir_lib.tensorboard_dir("gs://bucket/run")
  assert "://" not in got and got.startswith(os.path.join(tempfile.gettempdir(), "mdm_tb"))
  assert len(warnings) == 1 and "pip install 'mdm-jax[gcs]'" in warnings[0]
  assert "gs://bucket/run/tb" in warnings[0]
