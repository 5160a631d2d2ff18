"""SentencePiece BPE tokenizer, trained on the fly from the dataset's own text.

Fixed special ids (the model and the samplers rely on them):

  pad = 0   fills positions after eos; never a target of the text VAE.
  unk = 1   pieces the model does not know (only without byte fallback).
  eos = 2   ends every encoded text; `decode` stops there.
  sep = 3   the user-defined `<sep>` piece between a VQA question and its
            answer.

The comma (``PUNCTUATION``) is always a piece of its own, so a word or a numeral is the same
piece whether or not a comma follows it. BPE would otherwise merge the mark into
whichever word it follows most: trained on the digits' captions it made ``▁9`` and ``▁9,`` two
pieces (each seen in 1 or 2 of a digit's 10 captions, where ``▁nine`` is seen in 7), and
text-to-image read numeral captions at 0.60-0.70 against 0.90-0.94 for word captions; with the
comma a piece of its own the same run reads them at 0.83-0.93 (docs/results.md, "Joint and the
numeral captions").

There is no bos. Byte fallback (every UTF-8 byte gets its own piece, so no text
is ever unknown) is switched on only for vocabularies of at least 300 pieces:
the 256 byte pieces would otherwise crowd out the real ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import hashlib
import io
import os

from absl import logging
from etils import epath
import numpy as np
import sentencepiece as spm

PAD_ID = 0
UNK_ID = 1
EOS_ID = 2
SEP_ID = 3
SEP_PIECE = "<sep>"
# User-defined pieces, never merged into a word: the mark the bundled captions put after one.
# Another mark can join; each shifts the ids of every piece after it, so runs differ.
PUNCTUATION = (",",)
# Below this many pieces byte fallback is off (see the module docstring).
MIN_VOCAB_FOR_BYTE_FALLBACK = 300
# pad, unk, eos, <sep>, the punctuation and a few pieces to merge.
MIN_VOCAB_SIZE = 8 + len(PUNCTUATION)


class Tokenizer:
  """A SentencePiece model with the project's fixed special ids.

  Build one with `Tokenizer.train(texts, path, vocab_size)` (trains and saves
  the model to `path`) or `Tokenizer.load(path)`.
  """

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    got = (self._sp.pad_id(), self._sp.unk_id(), self._sp.eos_id(),
           self._sp.piece_to_id(SEP_PIECE))
    if got != (PAD_ID, UNK_ID, EOS_ID, SEP_ID) or self._sp.bos_id() != -1:
      raise ValueError(
          f"SentencePiece model has special ids (pad, unk, eos, sep)={got}, "
          f"bos={self._sp.bos_id()}; expected ({PAD_ID}, {UNK_ID}, {EOS_ID}, "
          f"{SEP_ID}) and no bos. Train it with "
          "data.tokenizer.Tokenizer.train.")

  @classmethod
  def train(cls, texts: Iterable[str], path: str | os.PathLike | None,
            vocab_size: int) -> Tokenizer:
    """Trains a BPE model on `texts` and saves it to `path` (if not None).

    `vocab_size` is an upper bound: a small corpus (the digits templates have
    a few dozen words) cannot fill a large vocabulary, and the model then has
    fewer pieces; read the real size from `.vocab_size`.
    """
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
      raise ValueError("Tokenizer.train got no non-empty text to train on.")
    if vocab_size < MIN_VOCAB_SIZE:
      raise ValueError(
          f"vocab_size={vocab_size} is too small; use at least "
          f"{MIN_VOCAB_SIZE}.")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora give fewer pieces, not an error
        character_coverage=1.0,
        byte_fallback=vocab_size >= MIN_VOCAB_FOR_BYTE_FALLBACK,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        bos_id=-1,
        user_defined_symbols=[SEP_PIECE, *PUNCTUATION],
        num_threads=1,
        minloglevel=2,
    )
    tok = cls(model.getvalue())
    logging.info("Trained a BPE tokenizer on %d texts: %d pieces (asked %d).",
                 len(texts), tok.vocab_size, vocab_size)
    if path is not None:
      tok.save(path)
    return tok

  @classmethod
  def load(cls, path: str | os.PathLike) -> Tokenizer:
    """Reads the serialized model at `path` (local or any `etils.epath` path:
    gs://, ...). A file that is not a SentencePiece model of this project's
    special ids is a ValueError naming it."""
    path = epath.Path(path)
    if not path.exists():
      raise ValueError(
          f"No tokenizer model at {path}. Train one with "
          "data.tokenizer.Tokenizer.train(texts, path, vocab_size) (the train "
          "run does this in its workdir).")
    proto = path.read_bytes()
    try:
      return cls(proto)
    except (RuntimeError, ValueError) as e:  # sentencepiece: RuntimeError on bytes it cannot parse
      raise ValueError(
          f"{path} is not a usable tokenizer model ({len(proto)} bytes; {e}): the file is "
          "corrupt, truncated or another kind of file. Put back the tokenizer.model saved "
          "with the run (experiments.train writes it into the workdir; experiments.export "
          "copies it).") from e

  @property
  def sha256(self) -> str:
    """Hex SHA-256 of the serialized model: the bytes `save` writes."""
    return hashlib.sha256(self._proto).hexdigest()

  def save(self, path: str | os.PathLike) -> None:
    """Writes the serialized model to `path` (local or any `etils.epath` path), atomically:
    a reader (another host, a sampler) sees the old file or the whole new one, never part.
    Locally through a temporary file renamed over `path`; an object store's single-object
    write is atomic by itself."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "://" in os.fspath(path):
      path.write_bytes(self._proto)
      return
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
      tmp.write_bytes(self._proto)
      os.replace(tmp, path)
    finally:
      tmp.unlink(missing_ok=True)

  # Pickling by the serialized model lets grain ship the tokenizer to workers.
  def __getstate__(self):
    return {"proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["proto"])

  @property
  def vocab_size(self) -> int:
    """Number of ids, specials included (ids are in [0, vocab_size))."""
    return self._sp.get_piece_size()

  pad_id = PAD_ID
  unk_id = UNK_ID
  eos_id = EOS_ID
  sep_id = SEP_ID

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without eos."""
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`: stops at the first eos, drops pad; `<sep>` shows as is."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == EOS_ID:
        break
      if i == PAD_ID or not 0 <= i < self.vocab_size:
        continue
      out.append(i)
    return self._sp.decode(out)

  def encode_padded(self, text: str, max_len: int) -> tuple[np.ndarray, bool]:
    """`text` as int32[max_len]: ids, eos, then pad.

    Returns (ids, truncated): a text longer than max_len - 1 ids is cut to
    max_len - 1 ids so that eos always fits, and `truncated` is True.
    """
    return pad_with_eos(self.encode(text), max_len)

  def encode_vqa(self, question: str, answer: str,
                 max_len: int) -> tuple[np.ndarray, int, bool]:
    """question ids + sep + answer ids + eos, padded to int32[max_len].

    Returns (ids, prompt_len, truncated); prompt_len counts the given tokens
    (question and sep); the model generates the rest. Too long: the answer is
    cut first, then the question, keeping sep, at least one answer token and
    eos.
    """
    if max_len < 4:
      raise ValueError(f"max_text_len={max_len} cannot hold a VQA pair; "
                       "use at least 4 (question, sep, answer, eos).")
    q, a = self.encode(question), self.encode(answer)
    truncated = False
    if len(q) > max_len - 3:
      q, truncated = q[:max_len - 3], True
    room = max_len - 2 - len(q)  # after question, sep and eos
    if len(a) > room:
      a, truncated = a[:room], True
    ids, _ = pad_with_eos(q + [SEP_ID] + a, max_len)
    return ids, len(q) + 1, truncated


def pad_with_eos(ids: Sequence[int], max_len: int) -> tuple[np.ndarray, bool]:
  """ids (cut to max_len - 1) + eos + pad as int32[max_len], and whether cut."""
  if max_len < 2:
    raise ValueError(f"max_text_len={max_len} is too short; use at least 2.")
  truncated = len(ids) > max_len - 1
  ids = list(ids[:max_len - 1]) + [EOS_ID]
  out = np.full((max_len,), PAD_ID, np.int32)
  out[:len(ids)] = ids
  return out, truncated
