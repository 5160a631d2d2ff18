"""Moving digits through the data pipeline: clip batches in the image batches' layout, whose
captions and VQA answers name the digit the dataset drew and the motion the test measures from
the pixels (centre of mass), a stream that resumes exactly, and clear errors for a clip/image
mismatch."""

from __future__ import annotations

import re

import numpy as np
import pytest

from data import moving_digits as md
from data import pipeline
from data import tokenizer as tokenizer_lib

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FRAMES, SIZE, MAX_LEN, BATCH = 4, 16, 16, 16


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.Tokenizer.train(pipeline.text_corpus("moving_digits"), None, 256)


def _iterator(tok, **kw):
  return pipeline.make_dataset("moving_digits", split="train", batch_size=BATCH,
                               image_size=SIZE, channels=1, max_text_len=MAX_LEN,
                               tokenizer=tok, seed=0, frames=FRAMES, **kw)


def _direction_from_pixels(clip):
  """The direction word of a clip (T, H, W, 1) in [-1, 1], from its ink's centre of mass."""
  v = (clip[..., 0] + 1.0) / 2.0
  rows, cols = np.arange(v.shape[1])[:, None], np.arange(v.shape[2])[None, :]
  com = np.stack([(v * rows).sum((1, 2)), (v * cols).sum((1, 2))], -1) / v.sum((1, 2))[:, None]
  dr, dc = com[-1] - com[0]
  assert max(abs(dr), abs(dc)) >= FRAMES - 1 - 1e-3     # it moved at least 1 pixel a frame
  if abs(dr) > abs(dc):
    return "down" if dr > 0 else "up"
  return "right" if dc > 0 else "left"


def _digit_of(word):
  return int(word) if word.isdigit() else WORDS.index(word)


def test_text_corpus_is_the_datasets_own():
  assert sorted(pipeline.text_corpus("moving_digits")) == sorted(md.text_corpus())


def test_clip_batches_and_their_text_match_the_pixels(tok):
  it = _iterator(tok)
  clips = md.load("train", frames=FRAMES)
  # Each clip's uint8 frames, to find the dataset's own metadata of a batch clip.
  index = {v.tobytes(): i for i, v in enumerate(clips.videos)}
  seen = set()
  for _ in range(3):
    b = next(it)
    assert b["image"].shape == (BATCH, FRAMES, SIZE, SIZE, 1) and b["image"].dtype == np.float32
    assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
    assert b["label"].shape == (BATCH,) and b["label"].dtype == np.int32
    assert b["caption"].shape == b["vqa"].shape == (BATCH, MAX_LEN)
    assert b["caption"].dtype == b["vqa"].dtype == np.int32
    assert b["vqa_prompt_len"].shape == (BATCH,)
    for i in range(BATCH):
      uint8 = np.round((b["image"][i] + 1.0) * 127.5).astype(np.uint8)
      j = index[uint8.tobytes()]
      seen.add(j)
      direction = _direction_from_pixels(b["image"][i])
      assert direction == md.DIRECTIONS[clips.directions[j]]
      assert b["label"][i] == clips.labels[j]
      words = re.findall(r"[a-z0-9]+", tok.decode(b["caption"][i]))
      assert _digit_of(words[0]) == clips.labels[j], words
      assert words[2] == direction, words
      ids, n = b["vqa"][i], int(b["vqa_prompt_len"][i])
      question, answer = tok.decode(ids[:n - 1]), tok.decode(ids[n:]).strip()
      if "which way" in question or "in which direction" in question:
        assert answer == direction
      elif "vertically" in question:
        assert answer == ("yes" if direction in ("up", "down") else "no")
      elif "horizontally" in question:
        assert answer == ("yes" if direction in ("left", "right") else "no")
      elif "digit" in question and "moving" in question or "in the clip" in question:
        assert answer == WORDS[clips.labels[j]]
  assert len(seen) == 3 * BATCH                         # distinct clips within an epoch
  assert it.stats()["caption_truncated"] == it.stats()["vqa_truncated"] == 0


def test_resumes_exactly(tok):
  it = _iterator(tok)
  next(it)
  state = it.get_state()
  want = next(it)
  again = _iterator(tok)
  again.set_state(state)
  got = next(again)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_held_out_examples_are_clips_with_their_text():
  ex = pipeline.eval_examples("moving_digits", num=3, image_size=SIZE, channels=1,
                              frames=FRAMES)
  held = md.load("test", frames=FRAMES, num=3)
  for e, label, direction in zip(ex, held.labels, held.directions):
    assert e["image"].shape == (FRAMES, SIZE, SIZE, 1)
    assert e["label"] == label
    assert e["captions"] == md.captions(label, direction)
    assert (e["question"], e["answer"]) in md.qa_pairs(label, direction)


def test_a_clip_image_mismatch_names_the_fix(tok):
  with pytest.raises(ValueError, match="model.frames"):
    pipeline.make_dataset(
        "moving_digits", split="train", batch_size=4, image_size=SIZE, channels=1,
        max_text_len=MAX_LEN, tokenizer=tok, seed=0, frames=1)
  with pytest.raises(ValueError, match="model.frames=1"):
    pipeline.make_dataset("digits", split="train", batch_size=4, image_size=8, channels=1,
                          max_text_len=MAX_LEN, tokenizer=tok, seed=0, frames=FRAMES)
