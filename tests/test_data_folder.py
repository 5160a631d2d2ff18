"""Local folders: prepare (conversions, errors) and the pipeline reading."""

from __future__ import annotations

import collections
import json
import os

import numpy as np
from PIL import Image
import pytest

from data import folder
from data import pipeline
from data import text_templates
from data import tokenizer as tokenizer_lib
import subproc

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0),
          (0, 255, 255), (255, 0, 255)]
LONG = ("a very long caption that goes on and on about the red square and "
        "the blue sky and the green grass and many other things besides")


def _save(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _solid(color, size=8):
  return np.broadcast_to(np.array(color, np.uint8), (size, size, 3)).copy()


@pytest.fixture(scope="module")
def tok():
  texts = [LONG, "a red square", "a blue square", "a blue block"]
  texts += text_templates.class_captions("cat")
  texts += text_templates.class_captions("dog")
  return tokenizer_lib.Tokenizer.train(texts * 5, None, 96)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
  """cat/: 3 RGB; dog/: 2 RGB, 1 RGBA, 1 grey, 1 unreadable, 1 non-image."""
  src = tmp_path_factory.mktemp("classes")
  for i in range(3):
    _save(f"{src}/cat/c{i}.png", _solid(COLORS[i]))
  for i in range(3, 5):
    _save(f"{src}/dog/d{i}.png", _solid(COLORS[i]))
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[:, :4] = (255, 0, 0, 255)  # left half opaque red
  rgba[:, 4:] = (0, 0, 255, 0)    # right half transparent (blue underneath)
  _save(f"{src}/dog/rgba.png", rgba, "RGBA")
  _save(f"{src}/dog/grey.png", np.full((8, 8), 100, np.uint8), "L")
  with open(f"{src}/dog/broken.png", "wb") as f:
    f.write(b"not a png at all")
  with open(f"{src}/dog/notes.txt", "w") as f:
    f.write("ignored")
  out = tmp_path_factory.mktemp("classes_out")
  stats = folder.prepare(str(src), str(out), channels=3)
  return str(out), stats


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory):
  src = tmp_path_factory.mktemp("captions")
  _save(f"{src}/a.png", _solid(COLORS[0]))
  _save(f"{src}/b.png", _solid(COLORS[2]))
  _save(f"{src}/sub/c.png", _solid(COLORS[1], 12))
  rows = [{"file": "a.png", "caption": "a red square"},
          {"file": "b.png", "caption": "a blue square"},
          {"file": "b.png", "caption": "a blue block"},
          {"file": "sub/c.png", "caption": LONG}]
  with open(f"{src}/captions.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  out = tmp_path_factory.mktemp("captions_out")
  stats = folder.prepare(str(src), str(out), channels=3, image_size=8)
  return str(out), stats


def _make(tok, data_dir, **kw):
  args = dict(split="train", batch_size=2, image_size=8, channels=3,
              max_text_len=16, tokenizer=tok, seed=0, data_dir=data_dir)
  args.update(kw)
  return pipeline.make_dataset("folder", **args)


def _all(it):
  batches = list(it)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_prepare_class_folder_stats(class_folder):
  out, stats = class_folder
  assert stats["images"] == 7 and stats["splits"] == {"train": 7}
  assert stats["converted"] == 2
  assert stats["converted_from"] == {"RGBA": 1, "L": 1}
  assert [f for f, _ in stats["unreadable"]] == [os.path.join("dog",
                                                              "broken.png")]
  meta = folder.read_metadata(out)
  assert meta["class_names"] == ["cat", "dog"] and meta["num_classes"] == 2
  assert meta["converted"] == 2 and not meta["has_captions"]


def test_class_folder_batches(class_folder, tok):
  out, _ = class_folder
  got = _all(_make(tok, out, num_epochs=1, drop_remainder=False))
  assert set(got) == {"image", "label", "caption"}
  assert sorted(got["label"].tolist()) == [0, 0, 0, 1, 1, 1, 1]
  for label, cap in zip(got["label"], got["caption"]):
    name = ["cat", "dog"][label]
    assert tok.decode(cap) in text_templates.class_captions(name)
  # The RGBA image: opaque red stays red, transparent becomes white.
  red_white = np.empty((8, 8, 3), np.float32)
  red_white[:, :4] = (1, -1, -1)
  red_white[:, 4:] = 1
  grey = np.full((8, 8, 3), 100 / 127.5 - 1, np.float32)
  for want in (red_white, grey):
    err = np.abs(got["image"] - want).max(axis=(1, 2, 3))
    assert err.min() < 1e-6
    assert got["label"][np.argmin(err)] == 1  # both were dog images


def test_record_path_shards_disjoint_and_cover(class_folder, tok):
  out, _ = class_folder
  seen = collections.Counter()
  for shard in range(2):
    got = _all(_make(tok, out, num_epochs=1, drop_remainder=False,
                     shard_index=shard, shard_count=2, batch_size=3))
    # 7 examples, global batches of 2 x 3: host 0 gets positions 0-2 and 6, host 1 3-5.
    assert len(got["label"]) == (4 if shard == 0 else 3)
    seen.update(np.round(img, 4).tobytes() for img in got["image"])
  everything = _all(_make(tok, out, num_epochs=1, drop_remainder=False))
  assert seen == collections.Counter(np.round(img, 4).tobytes()
                                     for img in everything["image"])
  assert len(seen) == 7  # all distinct images


def test_record_path_hosts_concatenated_are_the_one_host_global_batch(class_folder, tok):
  out, _ = class_folder
  hosts = [_make(tok, out, seed=3, batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
  one = _make(tok, out, seed=3, batch_size=4)
  for _ in range(4):  # 16 examples: across two epoch boundaries of the 7-example split
    want, parts = next(one), [next(h) for h in hosts]
    for k in want:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k], err_msg=k)


def test_record_path_deterministic_and_resumes(class_folder, tok):
  out, _ = class_folder
  a, b = _make(tok, out, seed=5), _make(tok, out, seed=5)
  for _ in range(4):
    x, y = next(a), next(b)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  state = json.loads(json.dumps(a.get_state()))
  want = [next(a) for _ in range(5)]  # crosses an epoch boundary (7 / 2)
  c = _make(tok, out, seed=5)
  c.set_state(state)
  for w in want:
    got = next(c)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


def test_captions_jsonl_and_truncation(caption_folder, tok):
  out, stats = caption_folder
  assert stats["layout"] == "captions" and stats["images"] == 3
  assert stats["converted"] == 0
  max_len = 10
  # Independent count: which captions need more than max_len - 1 tokens.
  assert len(tok.encode(LONG)) > max_len - 1
  assert all(len(tok.encode(c)) <= max_len - 1
             for c in ("a red square", "a blue square", "a blue block"))
  it = _make(tok, out, num_epochs=4, batch_size=3, max_text_len=max_len)
  got = _all(it)
  assert set(got) == {"image", "label", "caption"}
  assert (got["label"] == -1).all()
  assert it.stats() == {"examples": 12, "caption_truncated": 4,
                        "vqa_truncated": 0}
  blue = set()
  for img, cap in zip(got["image"], got["caption"]):
    color = tuple(np.rint((img[0, 0] + 1) * 127.5).astype(int))
    text = tok.decode(cap)
    if color == COLORS[1]:  # the long one
      assert cap[-1] == 2 and LONG.startswith(text) and text != LONG
    elif color == COLORS[0]:
      assert text == "a red square"
    else:
      assert color == COLORS[2]
      blue.add(text)
  # over 4 epochs b.png's caption is drawn from both of its captions
  assert blue <= {"a blue square", "a blue block"}
  assert len(blue) == 2


def test_text_corpus_and_eval_examples(caption_folder):
  out, _ = caption_folder
  corpus = pipeline.text_corpus("folder", data_dir=out)
  assert sorted(corpus) == sorted(["a red square", "a blue square",
                                   "a blue block", LONG])
  ex = pipeline.eval_examples("folder", split="train", data_dir=out,
                              image_size=8, channels=3)
  assert sorted(len(e["captions"]) for e in ex) == [1, 1, 2]
  assert all(e["question"] is None and e["label"] == -1 for e in ex)


def test_errors(tmp_path, tok):
  with pytest.raises(ValueError, match="does not exist"):
    folder.prepare(str(tmp_path / "missing"), str(tmp_path / "out"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=r"No images found.*\.png.*\.jpg"):
    folder.prepare(str(empty), str(tmp_path / "out"))
  (empty / "readme.txt").write_text("no images here")
  (empty / "sub").mkdir()
  with pytest.raises(ValueError, match="No images found"):
    folder.prepare(str(empty), str(tmp_path / "out"))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "captions.jsonl").write_text('{"file": "x.png"}\n')
  with pytest.raises(ValueError, match="captions.jsonl:1"):
    folder.prepare(str(bad), str(tmp_path / "out"))
  with pytest.raises(ValueError, match="data.prepare"):
    _make(tok, str(tmp_path / "not_prepared"))


def test_prepare_command_line(tmp_path):
  src = tmp_path / "src"
  _save(f"{src}/one/a.png", np.full((6, 6), 7, np.uint8), "L")
  _save(f"{src}/two/b.png", _solid(COLORS[3], 6))
  out = tmp_path / "out"
  run = subproc.run_module("data.prepare", f"--src={src}", f"--out={out}", "--image_size=4",
                           "--channels=1")
  assert run.returncode == 0, run.stderr
  stats = json.loads(run.stdout)
  assert stats["images"] == 2 and stats["converted"] == 1
  assert stats["converted_from"] == {"RGB": 1}
  assert folder.read_metadata(str(out))["image_size"] == 4


def _first_image(out):
  source = folder.open_folder(out, split="train")
  return np.asarray(source.decode(source.records[0])["image"])


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grey_is_scaled_over_its_range(tmp_path, channels):
  values = np.array([[0, 257, 32768, 65535]] * 4, np.uint16)  # 16-bit PNG grey
  src = tmp_path / "src"
  src.mkdir()
  Image.fromarray(values).save(src / "deep.png")
  assert Image.open(src / "deep.png").mode.startswith("I")
  (src / "captions.jsonl").write_text('{"file": "deep.png", "caption": "a ramp"}\n')
  stats = folder.prepare(str(src), str(tmp_path / "out"), channels=channels)
  assert stats["converted"] == 1
  got = _first_image(str(tmp_path / "out"))
  want = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)  # [0, 1, 128, 255]
  np.testing.assert_array_equal(got if channels == 1 else got[..., 0], want)
  if channels == 3:
    np.testing.assert_array_equal(got[..., 1], want)


def test_caption_file_faults_name_the_file_and_line(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  _save(f"{src}/a.png", _solid(COLORS[0]))
  (src / "captions.jsonl").write_bytes(
      b'{"file": "a.png", "caption": "fine"}\n{"file": "a.png", "caption": "caf\xe9"}\n')
  with pytest.raises(ValueError, match=r"captions.jsonl:2: not valid UTF-8.*iconv"):
    folder.prepare(str(src), str(tmp_path / "out"))
  for bad in ("../x.png", str(tmp_path / "x.png"), "sub/../../x.png"):
    (src / "captions.jsonl").write_text(json.dumps({"file": bad, "caption": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"captions.jsonl:1: 'file' .* outside the source"):
      folder.prepare(str(src), str(tmp_path / "out"))


def test_a_folder_name_that_is_not_utf8_is_named(tmp_path):
  src = tmp_path / "src"
  bad = os.path.join(os.fsencode(src), b"caf\xe9")
  os.makedirs(bad)
  _save(os.fsdecode(os.path.join(bad, b"a.png")), _solid(COLORS[0]))
  with pytest.raises(ValueError, match=r"b'caf\\xe9' is not valid UTF-8"):
    folder.prepare(str(src), str(tmp_path / "out"))


def test_images_missing_from_captions_are_counted(tmp_path):
  src = tmp_path / "src"
  for name in ("a", "b", "c"):
    _save(f"{src}/{name}.png", _solid(COLORS[0]))
  (src / "captions.jsonl").write_text('{"file": "./a.png", "caption": "red"}\n')
  stats = folder.prepare(str(src), str(tmp_path / "out"))
  assert stats["images"] == 1 and stats["uncaptioned"] == 2


@pytest.mark.parametrize("orientation,turns", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied_and_counted(tmp_path, orientation, turns):
  """A JPEG stored sideways with an EXIF orientation tag (as a phone writes it) is prepared
  upright: the stored pixels turned by hand (np.rot90, ``turns`` quarter turns
  counter-clockwise: tag 3 is a half turn, 6 a quarter turn clockwise, 8 counter-clockwise),
  and the upright picture it was made from up to JPEG's loss. An untagged image is kept."""
  upright = np.zeros((16, 24, 3), np.uint8)        # 16 high, 24 wide: a red top-left block
  upright[:8, :8] = (255, 0, 0)
  upright[8:, 16:] = (0, 0, 255)
  src = tmp_path / "src"
  (src / "a").mkdir(parents=True)
  exif = Image.Exif()
  exif[0x0112] = orientation                       # the Orientation tag
  Image.fromarray(np.rot90(upright, -turns)).save(src / "a" / "photo.jpg", quality=100, subsampling=0,
                                                  exif=exif)
  _save(f"{src}/b/plain.png", upright)
  with Image.open(src / "a" / "photo.jpg") as img:  # what the file holds, not turned
    assert img.getexif()[0x0112] == orientation
    stored = np.asarray(img.convert("RGB"))
  assert stored.shape[:2] == ((16, 24) if orientation == 3 else (24, 16))
  stats = folder.prepare(str(src), str(tmp_path / "out"), channels=3)
  assert stats["transposed"] == 1 and stats["images"] == 2
  assert folder.read_metadata(str(tmp_path / "out"))["transposed"] == 1
  source = folder.open_folder(str(tmp_path / "out"), split="train")
  got = {e["label"]: np.asarray(e["image"]) for e in map(source.decode, source.records)}
  np.testing.assert_array_equal(got[0], np.rot90(stored, turns))
  assert np.abs(got[0].astype(int) - upright).max() <= 8
  np.testing.assert_array_equal(got[1], upright)    # no tag: as it was


def test_record_path_state_resharded_between_host_counts(class_folder, tok):
  """The record path's state counts this host's examples: a 2-host state mapped to one host
  continues the 2-host stream (the oracle: both hosts going on)."""
  out, _ = class_folder
  hosts = [_make(tok, out, seed=3, batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(2):
    for h in hosts:
      next(h)
  one = _make(tok, out, seed=3, batch_size=4)
  state, examples = one.reshard_state(json.loads(json.dumps(hosts[0].get_state())), 2)
  assert examples == 2 * 4 and state == {"next_index": 8}
  one.set_state(state)
  for _ in range(2):  # across the 7-example split's epoch boundary
    got, parts = next(one), [next(h) for h in hosts]
    for k in got:
      np.testing.assert_array_equal(got[k], np.concatenate([p[k] for p in parts]), err_msg=k)


def test_record_path_restarts_at_a_global_batch(class_folder, tok):
  """`restart_at(n)` continues each host at global batch n (the resume of a position grain's
  worker processes saved): oracle, the same hosts read from the start, across the 7-example
  split's epoch boundary."""
  out, _ = class_folder
  hosts = [_make(tok, out, seed=3, batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(2):
    for h in hosts:
      next(h)
  restarted = [_make(tok, out, seed=3, batch_size=2, shard_index=i, shard_count=2)
               for i in range(2)]
  assert all(r.restart_at(2) for r in restarted)
  for _ in range(2):
    for r, h in zip(restarted, hosts):
      got, want = next(r), next(h)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
