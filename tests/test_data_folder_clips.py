"""A folder of captioned clips (animated images, folders of frames) prepared with
`python -m data.prepare --frames=T --frame_stride=k` and read as clip batches: the frames kept
are the hand-computed ones of the centred window, a clip too short is left out and counted, and
a mismatch between the prepared frames and the model's is refused by name."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
import pytest

from data import folder
from data import pipeline
from data import tokenizer as tokenizer_lib
import subproc

SIZE = 8


def _colour(clip: int, k: int) -> tuple[int, int, int]:
  """Frame k of clip `clip`: a solid colour that names both (exact in a GIF's palette)."""
  return (40 * k, 255 - 60 * clip, 128)


def _frame(clip, k):
  return np.broadcast_to(np.array(_colour(clip, k), np.uint8), (SIZE, SIZE, 3)).copy()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  """gif.gif: 7 frames; frames/: 6 PNG frames (plus a stray non-image); short.gif: 2 frames.
  Prepared with frames=3, frame_stride=2 through the command line."""
  src = tmp_path_factory.mktemp("clips")
  gif = [Image.fromarray(_frame(0, k)) for k in range(7)]
  gif[0].save(src / "gif.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
  os.makedirs(src / "frames")
  for k in range(6):
    Image.fromarray(_frame(1, k)).save(src / "frames" / f"{k:03d}.png")
  (src / "frames" / "notes.txt").write_text("not a frame")
  short = [Image.fromarray(_frame(2, k)) for k in range(2)]
  short[0].save(src / "short.gif", save_all=True, append_images=short[1:], duration=100)
  rows = [{"file": "gif.gif", "caption": "a red fade"},
          {"file": "frames", "caption": "a green fade"},
          {"file": "short.gif", "caption": "too short"}]
  (src / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path_factory.mktemp("clips_out")
  run = subproc.run_module("data.prepare", f"--src={src}", f"--out={out}", "--frames=3",
                           "--frame_stride=2", f"--image_size={SIZE}")
  assert run.returncode == 0, run.stderr
  return str(out), json.loads(run.stdout)


def test_prepare_keeps_every_strided_frame_of_the_centred_window(clips):
  out, stats = clips
  assert stats["images"] == 2 and stats["too_short"] == 1
  assert (stats["frames"], stats["frame_stride"]) == (3, 2)
  src = folder.open_folder(out, split="train")
  assert src.frames == 3 and len(src) == 2 and src.has_captions
  got = {}
  for i in range(len(src)):
    ex = src.decode(src.records[i])
    got[ex["captions"][0]] = np.stack([np.asarray(f) for f in ex["image"]])
  # A window of (3 - 1) * 2 + 1 = 5 frames, centred: 7 frames start at 1, 6 frames at 0.
  want_gif = np.stack([_frame(0, k) for k in (1, 3, 5)])
  want_dir = np.stack([_frame(1, k) for k in (0, 2, 4)])
  np.testing.assert_array_equal(got["a red fade"], want_gif)
  np.testing.assert_array_equal(got["a green fade"], want_dir)


def test_clip_batches_and_the_frames_check(clips):
  out, _ = clips
  tok = tokenizer_lib.Tokenizer.train(["a red fade", "a green fade"] * 10, None, 40)
  kw = dict(split="train", batch_size=2, image_size=SIZE, channels=3, max_text_len=8,
            tokenizer=tok, seed=0, data_dir=out, num_epochs=1)
  batch = next(pipeline.make_dataset("folder", frames=3, **kw))
  assert batch["image"].shape == (2, 3, SIZE, SIZE, 3)
  for clip, caption in zip(batch["image"], batch["caption"]):
    which = {"a red fade": (0, (1, 3, 5)), "a green fade": (1, (0, 2, 4))}[tok.decode(caption)]
    raw = np.rint((clip + 1) * 127.5).astype(np.uint8)   # [-1, 1] back to the stored pixels
    np.testing.assert_array_equal(raw, np.stack([_frame(which[0], k) for k in which[1]]))
  for frames in (1, 4):
    with pytest.raises(ValueError, match=rf"holds clips of 3 frames, but frames={frames} "
                       r"\(model.frames\).*set model.frames=3"):
      pipeline.make_dataset("folder", frames=frames, **kw)
  ex = pipeline.eval_examples("folder", split="train", num=1, image_size=4, channels=1,
                              data_dir=out, frames=3)
  assert ex[0]["image"].shape == (3, 4, 4, 1)


def test_clips_need_the_captions_layout_and_images_are_not_clips(tmp_path):
  Image.fromarray(_frame(0, 0)).save(tmp_path / "a.png")
  with pytest.raises(ValueError, match=r"clips \(frames=4\) are listed in SRC/captions.jsonl"):
    folder.prepare(str(tmp_path), str(tmp_path / "out"), frames=4)
  folder.prepare(str(tmp_path), str(tmp_path / "images"))
  with pytest.raises(ValueError, match=r"holds images, not clips, but frames=4"):
    pipeline.open_source("folder", split="train", data_dir=str(tmp_path / "images"), frames=4)
