"""The trainer on video: the `video_tiny` config trains the same network on moving-digit clips
with every task of the table, its loss is finite, and a run checkpointed after 2 steps and
resumed (a new trainer, the state and the data position restored from the checkpoint) takes
exactly the steps 3 and 4 of an uninterrupted 4-step run (the oracle).

In-process on one CPU device, with one trainer (its update step compiled once): the resumed run
starts from the state and data position read back from the checkpoint, nothing else.

A 2-step `train` of the same config (class-to-video only, to compile one sampler) writes its
sample grids as animated GIFs, and its TensorBoard events carry each GIF, byte for byte, as an
image summary at the step it was sampled."""

from __future__ import annotations

import io
import os
import struct

import jax
import numpy as np
from PIL import Image
import pytest

from data import pipeline
from data import tokenizer as tokenizer_lib
from experiments import configs
from mdm_jax.training import checkpoint as ckpt_lib
from mdm_jax.training import sharding
from mdm_jax.training.trainer import Trainer


@pytest.fixture(scope="module")
def setup():
  config = configs.load("video_tiny")
  config.total_steps = 4
  dc = config.data
  tok = tokenizer_lib.Tokenizer.train(pipeline.text_corpus(dc.name), None, dc.vocab_size)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])

  def make_iter():
    return pipeline.make_dataset(dc.name, split="train", batch_size=config.batch_size,
                                 image_size=dc.image_size, channels=dc.channels,
                                 max_text_len=dc.max_text_len, tokenizer=tok, seed=0,
                                 frames=config.model.frames)

  trainer = Trainer(config, mesh, vocab_size=tok.vocab_size, num_classes=10)
  return config, trainer, make_iter


def _steps(trainer, state, it, n):
  records = []
  for _ in range(n):
    batch = sharding.shard_batch(next(it), trainer.mesh, trainer.rules)
    with trainer.mesh_context():
      state, terms = trainer.train_step(state, batch)
    records.append({k: float(v) for k, v in jax.device_get(terms).items()})
  return state, records


@pytest.fixture(scope="module")
def uninterrupted(setup):
  config, trainer, make_iter = setup
  it = make_iter()
  first = next(make_iter())
  state, records = _steps(trainer, trainer.init_state(), it, 4)
  return first, jax.device_get(state), records


def test_clip_model_trains_with_finite_loss(setup, uninterrupted):
  config, trainer, _ = setup
  first, state, records = uninterrupted
  t = config.model.frames
  assert first["image"].shape == (config.batch_size, t, 16, 16, 1)
  assert trainer.model_cfg.n_image_tokens == t * (16 // config.model.patch_size) ** 2
  # A clip model's parameters: the image model's plus the per-frame position table.
  assert state["params"]["denoiser"]["frame_pos"].shape == (t, config.model.d_model)
  for r in records[:3]:
    assert all(np.isfinite(v) for v in r.values()), r
    assert r["rec_img"] > 0 and r["diff_img"] > 0 and r["diff_txt"] > 0
  assert len({r["loss"] for r in records}) == 4      # four batches, four losses
  # The VAE learns the clips: reconstruction falls over the first steps.
  assert records[3]["rec_img"] < records[0]["rec_img"]


def test_resumed_run_matches_the_uninterrupted_one(setup, uninterrupted, tmp_path):
  config, trainer, make_iter = setup
  _, want_state, want = uninterrupted
  it = make_iter()
  state, got = _steps(trainer, trainer.init_state(), it, 2)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(2, state, data_iter=it, config_dict=config.to_dict())
  del state
  it = make_iter()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    state, step = ckpt.restore_latest(trainer.abstract_state, data_iter=it)
  assert step == 2
  state, more = _steps(trainer, state, it, 2)
  assert got + more == want
  leaves = jax.tree_util.tree_leaves_with_path
  got_leaves, want_leaves = leaves(jax.device_get(state)), leaves(want_state)
  assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
  for (path, g), (_, w) in zip(got_leaves, want_leaves):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w),
                                  err_msg=jax.tree_util.keystr(path))


def _events(folder):
  """Every event of the TensorBoard files in ``folder`` (TFRecord framing: length, its CRC,
  the data, its CRC; read by hand, TensorFlow is not a dependency)."""
  from tensorboardX.proto import event_pb2
  events = []
  for name in sorted(os.listdir(folder)):
    data = open(os.path.join(folder, name), "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def test_a_clip_run_writes_its_gif_grids_to_tensorboard(tmp_path):
  from experiments import train as train_lib
  config = configs.load("video_tiny")
  config.update(dict(total_steps=2, log_every=1, sample_every=1, checkpoint_every=2))
  config.optim.warmup_steps = 1
  config.loss.task_weights = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
  config.sample.update(dict(num=2, steps=2))
  train_lib.train(config, str(tmp_path))
  images = {(e.step, v.tag): v.image for e in _events(tmp_path / "tb") if e.HasField("summary")
            for v in e.summary.value if v.HasField("image")}
  assert sorted(images) == [(1, "samples/class2img"), (2, "samples/class2img")]
  for step, name in ((1, "class2img_step1.gif"), (2, "class2img_final.gif")):
    image = images[(step, "samples/class2img")]
    gif = (tmp_path / "samples" / name).read_bytes()
    assert image.encoded_image_string == gif
    with Image.open(io.BytesIO(gif)) as decoded:
      assert decoded.format == "GIF" and decoded.is_animated
      assert (image.width, image.height) == decoded.size
    assert image.colorspace == 1                  # grey digits
