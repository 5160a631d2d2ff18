"""The trainer on video: the `video_tiny` config trains the same network on moving-digit clips
with every task of the table, its loss is finite, and a run checkpointed after 2 steps and
resumed (a new trainer, the state and the data position restored from the checkpoint) takes
exactly the steps 3 and 4 of an uninterrupted 4-step run (the oracle).

In-process on one CPU device, with one trainer (its update step compiled once): the resumed run
starts from the state and data position read back from the checkpoint, nothing else.

The training loop's sample grids (a clip model's animated GIFs) reach TensorBoard byte for byte
as image summaries at the step they were sampled."""

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


def test_sample_grids_go_to_tensorboard_as_they_were_written(tmp_path):
  """The loop's periodic and final sample files (a clip model's GIF grids, an image model's PNG,
  text) reach TensorBoard as image summaries named by task, at their step, the encoded file
  unchanged; text files stay out. (The named-config test checks the same for a whole video256
  run's final grid.)"""
  from experiments import sample_io
  from experiments import train as train_lib
  from mdm_jax.training import metrics_log
  rs = np.random.RandomState(0)
  clips = rs.uniform(-1, 1, (4, 3, 8, 8, 1)).astype(np.float32)   # 3 frames of random noise
  rgb = rs.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  log = metrics_log.MetricsLog(tmp_path, start_step=0, tensorboard_dir=str(tmp_path / "tb"))
  written = {}
  for step, tag in ((5, "step5"), (10, "final")):
    paths = [sample_io.save_visual_grid(clips, f"{tmp_path}/class2img_{tag}"),
             sample_io.save_visual_grid(rgb, f"{tmp_path}/joint_{tag}"),
             sample_io.save_text(f"{tmp_path}/captions_{tag}.txt", "0: a caption\n")]
    train_lib._log_grids(log, step, tag, paths)  # pylint: disable=protected-access
    written[(step, "samples/class2img")], written[(step, "samples/joint")] = paths[:2]
  log.close()
  images = {(e.step, v.tag): v.image for e in _events(tmp_path / "tb") if e.HasField("summary")
            for v in e.summary.value if v.HasField("image")}
  assert sorted(images) == sorted(written)
  for key, path in written.items():
    image, data = images[key], open(path, "rb").read()
    assert image.encoded_image_string == data
    with Image.open(io.BytesIO(data)) as decoded:
      assert (image.width, image.height) == decoded.size
      assert decoded.format == ("GIF" if key[1] == "samples/class2img" else "PNG")
      if decoded.format == "GIF":
        assert decoded.n_frames == 3
    assert image.colorspace == (1 if key[1] == "samples/class2img" else 3)
