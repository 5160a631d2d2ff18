"""SentencePiece tokenizer: special ids, round trips, padding and truncation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from data import tokenizer as tokenizer_lib

CORPUS = [
    "a handwritten digit seven", "the number 7 written by hand",
    "what digit is this?", "seven", "is the digit even?", "yes", "no",
    "a photo of a cat on a mat", "two dogs play in the park",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return tokenizer_lib.Tokenizer.train(CORPUS, path, vocab_size=64), path


def test_special_ids(tok):
  t, _ = tok
  assert (t.pad_id, t.unk_id, t.eos_id, t.sep_id) == (0, 1, 2, 3)
  sp = t._sp  # the raw SentencePiece model agrees with the constants
  assert sp.id_to_piece(3) == "<sep>"
  assert sp.bos_id() == -1
  assert sp.is_control(0) and sp.is_control(2) and sp.is_unknown(1)
  assert 8 <= t.vocab_size <= 64


def test_round_trip_and_save_load(tok):
  t, path = tok
  loaded = tokenizer_lib.Tokenizer.load(path)
  unpickled = pickle.loads(pickle.dumps(t))
  for text in ["a handwritten digit seven", "is the digit even?",
               "two dogs play in the park"]:
    ids = t.encode(text)
    assert all(4 <= i < t.vocab_size for i in ids)  # no special ids inside
    assert t.decode(ids) == text
    assert loaded.encode(text) == ids
    assert unpickled.encode(text) == ids


def test_decode_stops_at_eos_and_drops_pad(tok):
  t, _ = tok
  a, b = t.encode("seven"), t.encode("no")
  assert t.decode([0] + a + [0, 0]) == "seven"
  assert t.decode(a + [2] + b) == "seven"
  assert t.decode(np.array(a + [2, 0, 0], np.int32)) == "seven"


def test_encode_padded(tok):
  t, _ = tok
  text = "the number 7 written by hand"
  n = len(t.encode(text))
  assert n >= 4
  ids, truncated = t.encode_padded(text, n + 3)
  assert ids.dtype == np.int32 and ids.shape == (n + 3,)
  assert not truncated
  assert ids[n] == 2 and list(ids[n + 1:]) == [0, 0]
  assert t.decode(ids) == text
  # Exactly n + 1 fits (text + eos).
  ids, truncated = t.encode_padded(text, n + 1)
  assert not truncated and ids[-1] == 2
  # One less: the text is cut, eos kept.
  ids, truncated = t.encode_padded(text, n)
  assert truncated and ids[-1] == 2 and 0 not in ids
  assert text.startswith(t.decode(ids))


def test_encode_vqa(tok):
  t, _ = tok
  q, a = "is the digit even?", "yes"
  nq, na = len(t.encode(q)), len(t.encode(a))
  length = nq + na + 2 + 3  # sep, eos and 3 pads
  ids, prompt_len, truncated = t.encode_vqa(q, a, length)
  assert not truncated and prompt_len == nq + 1
  assert ids[nq] == 3  # sep right after the question
  assert ids[nq + 1 + na] == 2 and list(ids[nq + 2 + na:]) == [0, 0, 0]
  assert t.decode(ids[:nq]) == q and t.decode(ids[nq + 1:]) == a
  # Too short: question kept whole (answer cut) ...
  ids, prompt_len, truncated = t.encode_vqa(q, "two dogs play in the park",
                                            nq + 3)
  assert truncated and prompt_len == nq + 1 and ids[nq] == 3 and ids[-1] == 2
  # ... or the question cut, keeping sep, one answer token and eos.
  ids, prompt_len, truncated = t.encode_vqa(q, a, 4)
  assert truncated and prompt_len == 2 and list(ids[[1, 3]]) == [3, 2]
  with pytest.raises(ValueError, match="at least 4"):
    t.encode_vqa(q, a, 3)


def test_punctuation_is_a_piece_of_its_own():
  """BPE merges a mark into the word it follows most ('9,' and '9' two pieces, each rarer);
  with the marks as pieces of their own, the numeral is one piece however it is followed."""
  corpus = ["9, an image of a digit", "9, a blurry number", "9 written by hand",
            "nine, hand drawn", "nine in a scan", "what digit is this?"] * 30
  t = tokenizer_lib.Tokenizer.train(corpus, None, vocab_size=64)
  pieces = lambda text: [t._sp.id_to_piece(i) for i in t.encode(text)]
  assert pieces("9, an image of a digit")[:2] == ["▁9", ","]
  assert pieces("9 written by hand")[0] == "▁9"
  assert pieces("nine, hand drawn")[:2] == ["▁nine", ","]
  assert t.decode(t.encode("9, an image of a digit")) == "9, an image of a digit"
  assert t.decode(t.encode("what digit is this?")) == "what digit is this?"


def test_byte_fallback_only_for_large_vocab(tmp_path):
  small = tokenizer_lib.Tokenizer.train(CORPUS, None, vocab_size=64)
  assert small.decode(small.encode("zebra!")) != "zebra!"  # unknown chars
  large = tokenizer_lib.Tokenizer.train(CORPUS, tmp_path / "t.model", 320)
  assert large.decode(large.encode("zebra! ü")) == "zebra! ü"


def test_errors(tmp_path):
  with pytest.raises(ValueError, match="no non-empty text"):
    tokenizer_lib.Tokenizer.train(["", "  "], None, vocab_size=64)
  with pytest.raises(ValueError, match="No tokenizer model"):
    tokenizer_lib.Tokenizer.load(tmp_path / "missing.model")
  junk = tmp_path / "junk.model"        # sentencepiece alone says only "RuntimeError: ..."
  junk.write_bytes(np.random.default_rng(0).bytes(300))
  with pytest.raises(ValueError, match=rf"{junk} is not a usable tokenizer model \(300 bytes; "
                     ".*corrupt, truncated or another kind of file"):
    tokenizer_lib.Tokenizer.load(junk)


def test_save_is_atomic(tok, tmp_path, monkeypatch):
  t, _ = tok
  path = tmp_path / "tokenizer.model"
  path.write_bytes(b"the previous model")
  real_replace = os.replace

  def dies_before_rename(src, dst):  # a crash after the bytes are written, before the rename
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "replace", dies_before_rename)
  with pytest.raises(KeyboardInterrupt):
    t.save(path)
  assert path.read_bytes() == b"the previous model"  # never a partial file
  monkeypatch.setattr(os, "replace", real_replace)
  t.save(path)
  assert tokenizer_lib.Tokenizer.load(path).encode("seven") == t.encode("seven")
  assert sorted(os.listdir(tmp_path)) == ["tokenizer.model"]  # no temporary left behind
