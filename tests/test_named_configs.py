"""Every named data config trains end to end through `python -m experiments.train`: a tiny model
(the config's own data, task weights, dtype, remat and mesh; small widths, 16x16 images) on
stand-in data, a 3-step run preempted (SIGTERM, --signal_at_step) after step 2's checkpoint, then
the same command resumes from step 2, finishes and writes its final samples.

Stand-in data: `tfds.testing.mock_data` (random examples from each tfds builder's own features;
tests/mock_tfds_run.py wraps the subprocess in it) for imagenet2012, mnist and cifar10, a tiny
coco_captions prepared as array_record (tests/tiny_tfds.py; its builder code needs TensorFlow),
and for video256 a tiny folder of captioned 16-frame GIF clips prepared by `data.prepare`; its
final sample grid is an animated GIF, which the run's TensorBoard events carry as they are.
ImageNet has no text: it trains class-to-image with no tokenizer, and its workdir reopens for
`sample` without one.

Both runs have the same total_steps (the lr schedule's length), so the resumed run reads the
first one's compiled train step back from the run's compilation cache; it compiles the samplers.
About 50 s of CPU per config.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image
import pytest

from data import folder
from experiments import configs
from mdm_jax.models.mdm import TASKS
import subproc
import tiny_tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_RUN = os.path.join(REPO, "tests", "mock_tfds_run.py")
MOCK_EXAMPLES = 8   # per split
IMAGE_SIZE, NUM = 16, 4
TINY = [
    "--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.vae_width=32",
    "--config.model.vae_depth=1", "--config.model.d_state=8", "--config.model.headdim=16",
    "--config.model.mlp_ratio=0.0", "--config.model.latent_dim=4", "--config.model.ngroups=1",
    "--config.model.chunk_size=16", "--config.model.patch_size=4",
    f"--config.data.image_size={IMAGE_SIZE}", "--config.data.max_text_len=12",
    "--config.data.vocab_size=64", "--config.data.worker_count=0",
    "--config.batch_size=4", "--config.log_every=1", "--config.checkpoint_every=2",
    "--config.sample_every=0", f"--config.sample.num={NUM}", "--config.sample.steps=2",
    "--config.optim.warmup_steps=1",
]
# config -> (tfds dataset, samples its final samples write, has text)
CASES = {
    "imagenet256": ("imagenet2012", ["class2img_final.png"], False),
    "coco256": ("coco_captions", ["joint_final.png", "joint_final.txt", "captions_final.txt"],
                True),
    "instruct": ("mnist", ["joint_final.png", "joint_final.txt", "captions_final.txt"], True),
    "mnist": ("mnist", ["class2img_final.png", "joint_final.png", "joint_final.txt",
                        "captions_final.txt"], True),
    "cifar10": ("cifar10", ["class2img_final.png", "joint_final.png", "joint_final.txt",
                            "captions_final.txt"], True),
    "video256": ("folder", ["joint_final.gif", "joint_final.txt", "captions_final.txt"], True),
}


def _run(module: str, args: list[str], *, mock: bool) -> tuple[int, str]:
  cmd = ([sys.executable, MOCK_RUN, str(MOCK_EXAMPLES), module] if mock
         else [sys.executable, "-m", module]) + args
  proc = subproc.run(cmd)
  return proc.returncode, proc.stdout + proc.stderr


def _train_twice(name: str, root: str, coco_dir: str, clip_dir: str) -> dict:
  dataset = CASES[name][0]
  mock = dataset not in ("coco_captions", "folder")
  workdir = os.path.join(root, name)
  args = [f"--config={name}", f"--workdir={workdir}", *TINY]
  if not mock:
    args.append(f"--config.data.data_dir={coco_dir if dataset == 'coco_captions' else clip_dir}")
  out = {"workdir": workdir}
  args.append("--config.total_steps=3")
  out["rc1"], out["log1"] = _run("experiments.train", [*args, "--signal_at_step=2"], mock=mock)
  out["metrics1"] = _metrics(workdir)
  out["samples1"] = _samples(workdir)
  if out["rc1"] == 0:
    out["rc2"], out["log2"] = _run("experiments.train", args, mock=mock)
  if name == "imagenet256" and out.get("rc2") == 0:
    # The workdir reopens without a tokenizer; text tasks are refused with a clear message.
    npz = os.path.join(root, "imagenet_class.npz")
    out["sample"] = _run("experiments.sample", [f"--workdir={workdir}", "--task=class",
                                                f"--num={NUM}", f"--out={npz}"],
                         mock=True)
    out["sample_npz"] = npz
    out["sample_caption"] = _run(
        "experiments.sample", [f"--workdir={workdir}", "--task=caption", f"--num={NUM}",
                               f"--out={os.path.join(root, 'caption.jsonl')}"],
        mock=True)
  return out


def _tensorboard_images(workdir) -> dict[tuple[str, int], bytes]:
  """{(tag, step): encoded image} of the image summaries in workdir/tb (TFRecord framing read
  by hand: length, its CRC, the event, its CRC; TensorFlow is not a dependency)."""
  from tensorboardX.proto import event_pb2
  tb, found = os.path.join(workdir, "tb"), {}
  for name in sorted(os.listdir(tb)):
    data, pos = open(os.path.join(tb, name), "rb").read(), 0
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        if v.HasField("image"):
          found[(v.tag, event.step)] = v.image.encoded_image_string
  return found


def _metrics(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _samples(workdir) -> dict[str, float]:
  """{file name: mtime} of workdir/samples."""
  d = os.path.join(workdir, "samples")
  return ({f: os.path.getmtime(os.path.join(d, f)) for f in os.listdir(d)}
          if os.path.isdir(d) else {})


def _tiny_clips(src: str, out: str) -> str:
  """6 clips of 16 frames (GIFs, a grey square moving right), 4 for training and 2 held out
  (named so that their path hashes put them there), prepared for video256 (16 frames)."""
  rows = []
  for i in range(6):
    frames = []
    for t in range(16):
      x = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 20 * i, np.uint8)
      x[4:8, t % 12:t % 12 + 4] = 255
      frames.append(Image.fromarray(x))
    name = f"clip{i}.gif"
    frames[0].save(os.path.join(src, name), save_all=True, append_images=frames[1:])
    rows.append({"file": name, "caption": f"square {i} moves right"})
  with open(os.path.join(src, folder.CAPTIONS_FILE), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  stats = folder.prepare(src, out, frames=16, test_fraction=0.4)
  assert stats["splits"] == {"train": 4, "test": 2}, stats
  return out


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """(root for workdirs, tiny coco_captions data_dir, tiny clip folder data_dir)."""
  return (str(tmp_path_factory.mktemp("named")),
          tiny_tfds.prepare_tiny_coco(str(tmp_path_factory.mktemp("tfds"))),
          _tiny_clips(str(tmp_path_factory.mktemp("clips")),
                      str(tmp_path_factory.mktemp("clips_out"))))


def _grid_size(n, nrow, size=IMAGE_SIZE, pad=1, upscale=4):
  """(width, height) of sample_io.save_grid's PNG: nrow images a row, 1-pixel gaps."""
  rows = -(-n // nrow)
  return (pad + nrow * (size + pad)) * upscale, (pad + rows * (size + pad)) * upscale


@pytest.mark.parametrize("name", sorted(CASES))
def test_named_config_trains_resumes_and_samples(name, shared):
  r = _train_twice(name, *shared)
  dataset, samples, has_text = CASES[name]
  config = configs.load(name)
  assert config.data.name == dataset
  assert r["rc1"] == 0, r["log1"][-4000:]
  assert "Preempted (SIGTERM): saved the checkpoint of step 2 and stopped" in r["log1"], (
      r["log1"][-4000:])
  assert [m["step"] for m in r["metrics1"]] == [1, 2]
  assert r["samples1"] == {}                               # a preempted run writes none
  assert r["rc2"] == 0, r["log2"][-4000:]
  assert "Resumed from the checkpoint at step 2" in r["log2"], r["log2"][-4000:]
  assert "Started from scratch" in r["log1"]
  workdir = r["workdir"]
  metrics = _metrics(workdir)
  assert [m["step"] for m in metrics] == [1, 2, 3]          # step 3 continued from step 2
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
  assert all(np.isfinite(v) for m in metrics for v in m.values())
  assert sorted(_samples(workdir)) == sorted(samples)      # the resumed run's final samples
  for f in samples:
    path = os.path.join(workdir, "samples", f)
    if f.endswith(".txt"):
      lines = open(path).read().splitlines()
      # captions: one per held-out example (tiny coco's val and the tiny clips' test have 2)
      n = 2 if (dataset in ("coco_captions", "folder") and f.startswith("captions")) else NUM
      assert len(lines) == n, lines
    else:
      nrow = min(NUM, config.model.num_classes) if f.startswith("class2img") else 2
      img = Image.open(path)
      assert img.size == _grid_size(NUM, nrow), (f, img.size)
      if f.endswith(".gif"):   # a clip grid: one frame per clip frame
        assert img.n_frames == config.model.frames, (f, img.n_frames)
        assert _tensorboard_images(workdir) == {("samples/joint", 3): open(path, "rb").read()}
      else:
        assert img.mode == ("L" if config.data.channels == 1 else "RGB")
  # Tasks the config gives weight 0 (or the data cannot serve) never train.
  weights = dict(zip(TASKS, config.loss.task_weights))
  if not has_text:
    weights = {t: w if t == "class2img" else 0.0 for t, w in weights.items()}
  if dataset != "mnist":
    weights["vqa"] = 0.0
  for m in metrics:
    for task, w in weights.items():
      if w == 0:
        assert m[f"task/{task}"] == 0.0, (task, m)
  assert os.path.exists(os.path.join(workdir, "tokenizer.model")) == has_text
  if not has_text:
    assert "imagenet2012 has no text: no tokenizer, class2img only" in r["log1"]
    assert all(m["rec_txt"] == 0.0 and m["diff_txt"] == 0.0 for m in metrics)
    rc, log = r["sample"]
    assert rc == 0, log[-4000:]
    with np.load(r["sample_npz"]) as f:
      assert f["images"].shape == (NUM, IMAGE_SIZE, IMAGE_SIZE, 3)
      assert f["images"].dtype == np.uint8
      np.testing.assert_array_equal(f["labels"], np.arange(NUM))
    rc, log = r["sample_caption"]
    assert rc != 0 and "needs text, but this run's data (imagenet2012) has none" in log, log[-3000:]
