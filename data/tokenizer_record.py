"""The tokenizer belongs to the checkpoint: its digest is saved with every checkpoint, and every
reader of a run (``mdm_jax.load``, ``experiments.sample``, ``evaluate``, ``export``, and the
trainer resuming) opens the run's ``tokenizer.model`` through ``open_tokenizer``, which refuses
a missing, corrupt or different file by name.

A different tokenizer of the same vocabulary size would load and run without a word, turning
every caption and prompt into other ids; a tokenizer trained again, even on the same text, may
number its pieces differently. So a missing file is an error on resume too, never retrained.

The record (``record``) is the checkpoint's ``assets`` JSON item:
``{"tokenizer": {"file": "tokenizer.model", "sha256": hex, "vocab_size": int}}``, or
``{"tokenizer": None}`` for a run whose data has no text. A checkpoint written before the
record existed opens with a logged note, unverified.
"""
from __future__ import annotations

from collections.abc import Mapping
import logging
from typing import Any

from etils import epath

_log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.model"
_PUT_BACK = ("Put back the tokenizer.model this run trained with (a copy of the workdir, a "
             "backup, or an export of the run made by experiments.export has it)")


def record(tokenizer) -> dict[str, Any]:
  """The ``assets`` record of a run's tokenizer (None: the data has no text)."""
  if tokenizer is None:
    return {"tokenizer": None}
  return {"tokenizer": {"file": TOKENIZER_FILE, "sha256": tokenizer.sha256,
                        "vocab_size": tokenizer.vocab_size}}


def open_tokenizer(path, recorded: Mapping[str, Any] | None, *, where: str):
  """The tokenizer at ``path``, checked against a checkpoint's record.

  Args:
    path: the run's ``tokenizer.model`` (local or any ``etils.epath`` path).
    recorded: the checkpoint's ``assets`` record, or None when it predates records.
    where: the checkpoint, for messages (e.g. "checkpoint 6 of /runs/a").

  Returns:
    The ``data.tokenizer.Tokenizer``.

  Raises:
    FileNotFoundError: ``path`` is missing (with the digest it should have).
    ValueError: ``path`` does not parse, or is not the tokenizer the record names.
  """
  from data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  want = (recorded or {}).get("tokenizer") or {}
  if not path.exists():
    digest = f" (sha256 {want['sha256']})" if want else ""
    raise FileNotFoundError(
        f"{path} is missing: {where} was trained with the tokenizer that file held{digest}. "
        f"{_PUT_BACK}. It is never trained again for an existing checkpoint: a new one, even "
        "from the same text, may number its pieces differently.")
  tokenizer = tokenizer_lib.Tokenizer.load(path)   # a ValueError naming the file if corrupt
  verify(tokenizer, path, recorded, where=where)
  return tokenizer


def verify(tokenizer, path, recorded: Mapping[str, Any] | None, *, where: str) -> None:
  """Raises a ValueError when ``tokenizer`` (read from ``path``) is not the one ``recorded``
  names; logs a note when there is no record (a checkpoint older than records)."""
  if recorded is None or "tokenizer" not in recorded:
    _log.warning("%s predates tokenizer digests: %s is used unverified.", where, path)
    return
  want = recorded["tokenizer"]
  if want is None:
    raise ValueError(f"{where} was trained without text (no tokenizer), but {path} exists "
                     "and the data now has text: the run cannot have used it. Remove it, or "
                     "train the text run in another workdir.")
  if tokenizer.sha256 != want["sha256"]:
    sizes = (f"; {tokenizer.vocab_size} pieces, the recorded one {want['vocab_size']}"
             if tokenizer.vocab_size != want.get("vocab_size") else
             f"; the same vocabulary size, {tokenizer.vocab_size}, but other pieces or ids")
    raise ValueError(
        f"{path} is not the tokenizer {where} was trained with: its sha256 is "
        f"{tokenizer.sha256[:16]}..., the checkpoint recorded {want['sha256'][:16]}...{sizes}. "
        f"The model's ids would decode to other words. {_PUT_BACK}.")
