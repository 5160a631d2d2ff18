"""grain input pipelines: one batch format for every dataset and task.

`make_dataset(name, ...)` returns a `DataIterator` (a grain `DatasetIterator`,
so orbax's grain handler checkpoints it) yielding dicts of numpy arrays:

  image           float32 (B, S, S, C) in [-1, 1]; centre-cropped, resized. A
                  clip dataset's (moving_digits, a folder of clips): clips
                  (B, T, S, S, C), each frame so (T = `frames`).
  label           int32 (B,); -1 where the dataset has no labels.
  caption         int32 (B, T): caption ids, eos, then pad (0). Present when
                  the dataset has text: its own captions (coco_captions, a
                  folder with captions.jsonl; one picked per example and epoch
                  from the seed) or captions made from the label by templates
                  (digits, mnist, cifar10, class sub-folders).
  vqa             int32 (B, T): question ids, <sep>, answer ids, eos, pad.
  vqa_prompt_len  int32 (B,): leading vqa tokens given to the model (question
                  and <sep>); the rest is generated. Both vqa keys are present
                  only for digit datasets (digits, mnist, moving_digits),
                  whose label (and direction of motion) determines the
                  answers; other datasets omit them.

B is the per-host batch, S = image_size, C = channels, T = max_text_len.
Text longer than T is truncated (eos always kept); truncations are counted in
`DataIterator.stats()` and logged (the first one, then every 1000th).

Order: one global stream, the split shuffled by `seed` and reshuffled each
epoch, with random choices (which caption, which question) drawn from the
seed and the position in that stream; it is cut into global batches of
`batch_size * shard_count` examples, and host `shard_index` takes the
`shard_index`-th contiguous `batch_size` slice of each. So the hosts' batches
concatenated in host order are the batches one host would read with the global
batch size (the same examples, order and text on any number of hosts), the
hosts never overlap, a seed fixes the whole stream, and `get_state()` /
`set_state()` resume exactly.

Datasets: 'digits' (bundled, default), 'moving_digits' (bundled clips,
`data.moving_digits`), 'mnist', 'cifar10', 'imagenet2012', 'coco_captions'
(tfds, prepared as array_record in data_dir), 'folder' (a folder converted by
`python -m data.prepare`, data_dir = its output; of clips with `--frames=T`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
import dataclasses
import sys
from typing import Any

from absl import logging
import grain
import numpy as np

from data import digits
from data import folder
from data import images as images_lib
from data import moving_digits
from data import source as source_lib
from data import tfds_sources
from data import tokenizer as tokenizer_lib

DATASETS = ("digits", "moving_digits", "folder", *tfds_sources.SUPPORTED)
CLIP_DATASETS = ("moving_digits",)
_LOG_TRUNCATION_EVERY = 1000


def open_source(name: str, *, split: str, data_dir: str | None = None,
                skip_images: bool = False,
                frames: int | None = None) -> source_lib.ExampleSource:
  """The `ExampleSource` of a dataset split (see the module docstring).

  skip_images=True may leave tfds images undecoded (for reading text only).
  frames: frames per clip of a clip dataset (None: its default); an image
  dataset takes only None or 1.
  """
  if name in CLIP_DATASETS:
    if frames == 1:
      raise ValueError(f"Dataset {name!r} holds clips, but frames=1 (model.frames) asks "
                       "for images; set model.frames to the clip length (>= 2, e.g. the "
                       "video_tiny config's 4).")
    return moving_digits.open_moving_digits(
        split, moving_digits.DEFAULT_FRAMES if frames is None else frames)
  if name == "folder":
    src = folder.open_folder(data_dir, split=split)
    if src.frames > 1 and frames not in (None, src.frames):
      raise ValueError(f"The prepared folder {data_dir} holds clips of {src.frames} frames, "
                       f"but frames={frames} (model.frames) asks for {frames}; set "
                       f"model.frames={src.frames}, or prepare the clips again with "
                       f"`python -m data.prepare --frames={frames}`.")
    if src.frames > 1 or frames in (None, 1):
      return src
  if frames not in (None, 1):
    raise ValueError(f"Dataset {name!r} holds images, not clips, but frames={frames} (the "
                     f"model's model.frames) asks for clips; set model.frames=1, or train "
                     f"on a clip dataset ({', '.join(CLIP_DATASETS)}, or a folder "
                     "prepared with `python -m data.prepare --frames=T`).")
  if name == "digits":
    return digits.open_digits(split)
  if name in tfds_sources.SUPPORTED:
    return tfds_sources.open_tfds(name, split=split, data_dir=data_dir,
                                  skip_images=skip_images)
  raise ValueError(f"Unknown dataset {name!r}; use one of {DATASETS}.")


def describe(name: str, *, split: str = "train",
             data_dir: str | None = None) -> dict[str, Any]:
  """What a dataset split offers: sizes, classes, which batch keys it has."""
  src = open_source(name, split=split, data_dir=data_dir)
  return {"num_examples": len(src), "num_classes": src.num_classes,
          "class_names": src.class_names, "has_caption": src.has_caption_text,
          "has_vqa": src.has_vqa}


# Held-out split per dataset: what training samples from and what `sample` and
# `evaluate` read; tfds names its held-out splits differently per dataset.
_HELDOUT_SPLITS = {"imagenet2012": "validation", "coco_captions": "val"}


def heldout_split(name: str) -> str:
  """The held-out split of dataset `name` ('test' unless tfds names it
  otherwise: imagenet2012 'validation', coco_captions 'val')."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; use one of {DATASETS}.")
  return _HELDOUT_SPLITS.get(name, "test")


def text_corpus(name: str, *, data_dir: str | None = None,
                split: str = "train", max_examples: int = 20_000) -> list[str]:
  """Text to train the tokenizer on: every caption, question and answer.

  Label-made text is listed in full; a dataset's own captions are read from
  up to `max_examples` evenly spaced examples of `split`.
  """
  src = open_source(name, split=split, data_dir=data_dir, skip_images=True)
  texts = []
  for key in range(src.num_text_keys):
    texts += src.label_captions(key)
    for q, a in src.label_qa(key):
      texts += [q, a]
  if src.has_captions:
    n = len(src)
    for i in np.unique(np.linspace(0, n - 1, min(n, max_examples)).astype(int)):
      texts += list(src.decode(src.records[int(i)])["captions"])
  if not texts:
    raise ValueError(f"Dataset {name!r} has no text (no captions, no text "
                     "from labels); it can only train class-to-image.")
  return texts


# --------------------------------------------------------------------------
# Text made from labels, tokenised once.


@dataclasses.dataclass(frozen=True)
class _LabelTextTables:
  """Token ids of every label-made text (L text keys, V captions, Q questions;
  a key is the label unless the source's `text_keys` says otherwise)."""
  caption_ids: np.ndarray | None = None        # int32 (L, V, T)
  caption_truncated: np.ndarray | None = None  # bool (L, V)
  vqa_ids: np.ndarray | None = None            # int32 (L, Q, T)
  vqa_prompt_len: np.ndarray | None = None     # int32 (L, Q)
  vqa_truncated: np.ndarray | None = None      # bool (L, Q)


def _label_tables(src: source_lib.ExampleSource,
                  tok: tokenizer_lib.Tokenizer,
                  max_len: int) -> _LabelTextTables:
  if src.label_text is None:
    return _LabelTextTables()
  keys = range(src.num_text_keys)
  caps = [[tok.encode_padded(c, max_len) for c in src.label_captions(k)]
          for k in keys]
  tables = {
      "caption_ids": np.array([[ids for ids, _ in row] for row in caps],
                              np.int32),
      "caption_truncated": np.array([[t for _, t in row] for row in caps]),
  }
  if src.has_vqa:
    qas = [[tok.encode_vqa(q, a, max_len) for q, a in src.label_qa(k)]
           for k in keys]
    tables["vqa_ids"] = np.array([[r[0] for r in row] for row in qas],
                                 np.int32)
    tables["vqa_prompt_len"] = np.array([[r[1] for r in row] for row in qas],
                                        np.int32)
    tables["vqa_truncated"] = np.array([[r[2] for r in row] for row in qas])
  return _LabelTextTables(**tables)


def _pick_label_text(tables: _LabelTextTables, labels: np.ndarray,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Label-made text for text keys `labels` (any shape), one random variant
  each."""
  out = {}
  if tables.caption_ids is not None:
    j = rng.integers(tables.caption_ids.shape[1], size=labels.shape)
    out["caption"] = tables.caption_ids[labels, j]
    out["caption_truncated"] = tables.caption_truncated[labels, j]
  if tables.vqa_ids is not None:
    q = rng.integers(tables.vqa_ids.shape[1], size=labels.shape)
    out["vqa"] = tables.vqa_ids[labels, q]
    out["vqa_prompt_len"] = tables.vqa_prompt_len[labels, q]
    out["vqa_truncated"] = tables.vqa_truncated[labels, q]
  return out


# --------------------------------------------------------------------------
# Transforms: per record (decode, resize, tokenise), or per batch when the
# whole split is preloaded and its text comes from labels (one gather).


class _RecordToExample(grain.transforms.RandomMap):
  """Raw record -> one model example (unbatched arrays)."""

  def __init__(self, src: source_lib.ExampleSource,
               tok: tokenizer_lib.Tokenizer, tables: _LabelTextTables,
               image_size: int, channels: int, max_len: int):
    self._src, self._tok, self._tables = src, tok, tables
    self._image_size, self._channels, self._max_len = (image_size, channels,
                                                       max_len)

  def random_map(self, record, rng: np.random.Generator) -> dict[str, Any]:
    ex = self._src.decode(record)
    label = int(ex["label"])
    out = {"image": _to_model(ex["image"], self._image_size, self._channels,
                              self._src.frames),
           "label": np.int32(label)}
    if self._src.has_captions:
      caps = ex["captions"]
      text = caps[rng.integers(len(caps))] if caps else ""
      out["caption"], truncated = self._tok.encode_padded(text, self._max_len)
      out["caption_truncated"] = np.bool_(truncated)
    elif self._src.label_text is not None:
      if not 0 <= label < self._src.num_classes:
        raise ValueError(f"{self._src.name}: label {label} outside "
                         f"[0, {self._src.num_classes}).")
      out.update(_pick_label_text(self._tables,
                                  np.asarray(self._src.text_key_of(ex)), rng))
    return out


class _PreloadedBatch(grain.transforms.Map):
  """Global batch number -> this host's slice of that model batch, for a
  preloaded split.

  Global batch b holds positions [b*G, (b+1)*G) (G = batch_size * shard_count)
  of the stream that visits the split once per epoch in an order permuted by
  (seed, epoch); this host takes positions [shard_index * batch_size, ...) of
  it. The text variants are drawn for the whole global batch from (seed, b), so
  they do not depend on the host count. This is grain's shuffle/repeat/batch
  done with one numpy permutation per epoch: grain's per-element index_shuffle
  alone costs ~36 us an element (2.3 ms a batch of 64), several times the
  whole budget of this tiny dataset.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
               shard_index: int, shard_count: int, total: int | None,
               seed: int, tables: _LabelTextTables,
               text_keys: np.ndarray | None = None):
    self._images, self._labels, self._tables = images, labels, tables
    self._text_keys = labels if text_keys is None else text_keys
    self._batch_size, self._total, self._seed = batch_size, total, seed
    self._shard_index, self._global_batch = shard_index, batch_size * shard_count
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 4:
        self._perms.clear()
      rng = np.random.default_rng([self._seed, epoch])
      self._perms[epoch] = rng.permutation(len(self._labels))
    return self._perms[epoch]

  def map(self, b) -> dict[str, Any]:
    start = b * self._global_batch
    stop = start + self._global_batch
    if self._total is not None:
      stop = min(stop, self._total)
    epochs, offsets = np.divmod(np.arange(start, stop), len(self._labels))
    indices = np.empty(len(epochs), np.int64)
    for e in np.unique(epochs):
      at = epochs == e
      indices[at] = self._perm(int(e))[offsets[at]]
    labels = self._labels[indices]
    text = _pick_label_text(self._tables, self._text_keys[indices],
                            np.random.default_rng([self._seed, b, 1]))
    mine = slice(self._shard_index * self._batch_size,
                 (self._shard_index + 1) * self._batch_size)
    return {"image": self._images[indices[mine]], "label": labels[mine],
            **{k: v[mine] for k, v in text.items()}}


class _HostPositions(grain.MapDataset):
  """This host's elements of a global stream: local element q is global
  element (q // B * shard_count + shard_index) * B + q % B, B = batch_size,
  i.e. the host's contiguous slice of each global batch (the last, partial
  global batch of a finite stream gives what falls in this host's slice)."""

  def __init__(self, parent: grain.MapDataset, batch_size: int,
               shard_index: int, shard_count: int):
    super().__init__(parent)
    self._b, self._i, self._n = batch_size, shard_index, shard_count
    full, rest = divmod(len(parent), batch_size * shard_count)
    self._length = full * batch_size + min(max(rest - shard_index * batch_size,
                                               0), batch_size)

  def __len__(self) -> int:
    return self._length

  def _global(self, q: int) -> int:
    b, k = divmod(q, self._b)
    return (b * self._n + self._i) * self._b + k

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._global(index)]

  def __str__(self) -> str:
    return f"_HostPositions(batch {self._b}, host {self._i} of {self._n})"


def _to_model(image, image_size: int, channels: int, frames: int) -> np.ndarray:
  """One image -> float32 (S, S, C), or one clip uint8 (T, H, W, C) -> float32
  (T, S, S, C), each frame as an image, in [-1, 1]."""
  if frames == 1:
    return images_lib.to_model_image(image, image_size, channels)
  return np.stack([images_lib.to_model_image(f, image_size, channels)
                   for f in image])


def _preloaded_images(images: np.ndarray, image_size: int, channels: int,
                      frames: int = 1) -> np.ndarray:
  """uint8 (N, H, W[, C]) -> float32 (N, S, S, C) in [-1, 1], once; clips
  (N, T, H, W, C) -> (N, T, S, S, C)."""
  if frames > 1 and images.shape[2:4] == (image_size, image_size) and (
      images.shape[-1] == channels):
    # Frames already at the model's size: only the scaling of to_model_image.
    return images.astype(np.float32) * (2.0 / 255.0) - 1.0
  return np.stack([_to_model(im, image_size, channels, frames)
                   for im in images])


# --------------------------------------------------------------------------
# The iterator handed to the train loop.


class DataIterator(grain.DatasetIterator):
  """A grain iterator over model batches that counts truncated text.

  `get_state()`/`set_state()` are the wrapped grain iterator's (JSON-able),
  so orbax's grain checkpoint handler saves it. `stats()` counts since this
  iterator was made (a restored iterator starts again from zero).
  """

  def __init__(self, parent: grain.DatasetIterator, name: str, *,
               batch_size: int = 1, shard_count: int = 1,
               position: str | None = None,
               restart: Callable[[int], grain.DatasetIterator] | None = None):
    """`position`: what the state's `next_index` counts -- "global_batch"
    (the same on every host, whatever their number), "host_example" (this
    host's examples, whole batches) or None (a state `reshard_state` cannot
    map, e.g. grain's worker processes'). `restart(n)`: a new parent
    iterator that starts at global batch n of the same stream."""
    super().__init__(parent)
    self._name = name
    self._counts = collections.Counter()
    self._batch_size, self._shard_count = batch_size, shard_count
    self._position = position
    self._restart = restart

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._parent))
    self._counts["examples"] += len(batch["label"])
    for key in ("caption", "vqa"):
      flags = batch.pop(f"{key}_truncated", None)
      if flags is None:
        continue
      before = self._counts[f"{key}_truncated"]
      after = before + int(np.sum(flags))
      self._counts[f"{key}_truncated"] = after
      if after > before and (before == 0 or after // _LOG_TRUNCATION_EVERY >
                             before // _LOG_TRUNCATION_EVERY):
        logging.warning(
            "%s: %d %s texts truncated to max_text_len so far (of %d "
            "examples); raise max_text_len to keep them whole.", self._name,
            after, key, self._counts["examples"])
    return batch

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)

  def reshard_state(self, state: dict[str, Any],
                    saved_count: int) -> tuple[dict[str, Any], int] | None:
    """Maps a state saved by a host of a `saved_count`-host run (any host: all
    read the same number of global batches) to this iterator's host count.

    grain's iterator states are per host and have no such mapping; this
    pipeline's stream is the same for any host count (see the module
    docstring), so a plain position is mapped exactly, given the same global
    batch size.

    Returns:
      (state for this host, global examples read so far), or None where the
      state is not a plain position (grain worker processes).
    """
    if self._position is None or set(state) != {"next_index"}:
      return None
    n = int(state["next_index"])
    if self._position == "global_batch":
      return {"next_index": n}, n * self._batch_size * self._shard_count
    examples = n * saved_count  # whole global batches: n = batches * (G / saved_count)
    if examples % self._shard_count:
      return None
    return {"next_index": examples // self._shard_count}, examples

  def restart_at(self, global_batches: int) -> bool:
    """Continues the stream at global batch `global_batches` (its examples
    counted over all hosts: `global_batches * batch_size * shard_count`),
    whatever position this iterator had: the resume of a state that
    `reshard_state` cannot map (grain worker processes' per-worker states).
    Exact: every example of this pipeline is a pure function of its global
    index. Returns False when this iterator cannot restart."""
    if self._restart is None:
      return False
    self._parents = (self._restart(int(global_batches)),)
    return True

  def stats(self) -> dict[str, int]:
    """{'examples', 'caption_truncated', 'vqa_truncated'} counts so far."""
    return {"examples": self._counts["examples"],
            "caption_truncated": self._counts["caption_truncated"],
            "vqa_truncated": self._counts["vqa_truncated"]}

  def __str__(self) -> str:
    return f"DataIterator({self._name})"


def make_dataset(
    name: str,
    *,
    split: str,
    batch_size: int,
    image_size: int,
    channels: int,
    max_text_len: int,
    tokenizer: tokenizer_lib.Tokenizer | None,
    seed: int,
    frames: int = 1,
    shard_index: int = 0,
    shard_count: int = 1,
    data_dir: str | None = None,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
    read_threads: int = 4,
) -> DataIterator:
  """A checkpointable iterator of model batches (see the module docstring).

  Args:
    name: one of DATASETS.
    split: e.g. 'train', 'test' (digits, mnist, cifar10), 'validation'
      (imagenet2012), 'val' (coco_captions).
    batch_size: examples per batch on this host.
    image_size: side S of the square images.
    channels: 1 or 3; sources are converted.
    max_text_len: T, tokens per caption / VQA sequence, eos included.
    tokenizer: the trained tokenizer (its ids go into caption / vqa); may be
      None only for datasets without text (imagenet2012).
    seed: fixes order and random choices.
    frames: frames per clip (the model's model.frames): 1 for an image
      dataset; a clip dataset's clips are rendered with this many.
    shard_index, shard_count: this host's slice of each global batch of
      batch_size * shard_count (jax.process_index() and jax.process_count()
      on a pod).
    data_dir: tfds data_dir, or the prepared folder for 'folder'.
    num_epochs: passes over the split (all hosts together); None repeats
      forever.
    drop_remainder: drop a last incomplete global batch (finite num_epochs
      only), so every host gets the same number of full batches.
    worker_count: grain worker processes (needs absl flags parsed and a
      `__main__` guard); 0 works in-process.
    read_threads: threads reading and decoding records (not used by the
      preloaded digits path, where a batch is one gather).
  """
  images_lib.check_channels(channels)
  if batch_size < 1 or image_size < 1:
    raise ValueError(f"batch_size={batch_size} and image_size={image_size} "
                     "must be positive.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count="
                     f"{shard_count}).")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs={num_epochs} must be >= 1 or None.")
  src = open_source(name, split=split, data_dir=data_dir, frames=frames)
  if src.has_vqa and max_text_len < 4:
    raise ValueError(f"max_text_len={max_text_len} cannot hold a VQA pair; "
                     "use at least 4.")
  if src.has_caption_text and max_text_len < 2:
    raise ValueError(f"max_text_len={max_text_len} too short; use >= 2.")
  if src.has_caption_text and tokenizer is None:
    raise ValueError(f"{name} has text: pass the trained tokenizer "
                     "(data.tokenizer.Tokenizer.train or .load).")
  global_batch = batch_size * shard_count
  total = None if num_epochs is None else len(src) * num_epochs
  if total is not None and drop_remainder:
    if total < global_batch:
      raise ValueError(f"{name}/{split}: {len(src)} examples x {num_epochs} "
                       f"epochs give no full global batch of {batch_size} x "
                       f"{shard_count} hosts.")
    total -= total % global_batch  # every host gets the same number of batches
  if total is not None and total <= shard_index * batch_size:
    raise ValueError(f"{name}/{split}: {len(src)} examples x {num_epochs} "
                     f"epochs leave host {shard_index} of {shard_count} no "
                     f"examples at batch size {batch_size}.")
  tables = _label_tables(src, tokenizer, max_text_len)

  def build(start_batch: int) -> grain.IterDataset:
    """This host's batches from global batch `start_batch` on (0: the start)."""
    if src.in_memory is not None and not src.has_captions:
      raw_images, labels = src.in_memory
      num_batches = (sys.maxsize if total is None else
                     -(-(total - shard_index * batch_size) // global_batch))
      ds = grain.MapDataset.range(min(start_batch, num_batches), num_batches).map(
          _PreloadedBatch(_preloaded_images(raw_images, image_size, channels,
                                            src.frames),
                          np.asarray(labels, np.int32), batch_size, shard_index,
                          shard_count, total, seed, tables, src.text_keys))
      # Each batch is one cheap gather: reader threads would only add overhead.
      it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                   prefetch_buffer_size=0))
    else:
      ds = (grain.MapDataset.source(src.records).seed(seed).shuffle()
            .repeat(num_epochs)
            .random_map(_RecordToExample(src, tokenizer, tables, image_size,
                                         channels, max_text_len)))
      if total is not None:
        ds = ds[:total]
      if start_batch:  # examples are pure functions of their global index
        ds = ds[start_batch * global_batch:]
      if shard_count > 1:
        ds = _HostPositions(ds, batch_size, shard_index, shard_count)
      # Prefetch single examples (a bounded buffer), then batch.
      it_ds = ds.to_iter_dataset(grain.ReadOptions(
          num_threads=read_threads, prefetch_buffer_size=max(
              2 * batch_size, 4 * read_threads) if read_threads else 0))
      it_ds = it_ds.batch(batch_size, drop_remainder=drop_remainder)
    if worker_count > 0:
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=worker_count))
    return it_ds

  if worker_count > 0:
    position = None  # per-worker states: resharded by restarting (restart_at)
  elif src.in_memory is not None and not src.has_captions:
    position = "global_batch"
  else:
    position = "host_example"
  return DataIterator(iter(build(0)), name=f"{name}/{split}",
                      batch_size=batch_size, shard_count=shard_count,
                      position=position,
                      restart=lambda start_batch: iter(build(start_batch)))


# --------------------------------------------------------------------------
# Held-out examples with their raw strings, for evaluation and sampling.


def eval_examples(name: str, *, split: str | None = None, num: int | None = None,
                  image_size: int = 8, channels: int = 1,
                  data_dir: str | None = None,
                  frames: int = 1) -> list[dict[str, Any]]:
  """The first `num` examples of `split` (default: `heldout_split(name)`) in
  order, with raw strings.

  Each is {'index': int, 'image': float32 (S, S, C) in [-1, 1] (a clip
  dataset's: (T, S, S, C), T = frames),
  'label': int (-1 if none), 'captions': every reference caption (list[str]),
  'question': str | None, 'answer': str | None (the dataset's reference)}.
  For digit datasets the question cycles through the question types by index,
  so a test set covers all of them.
  """
  split = heldout_split(name) if split is None else split
  src = open_source(name, split=split, data_dir=data_dir, frames=frames)
  n = len(src) if num is None else min(num, len(src))
  out = []
  for i in range(n):
    ex = src.decode(src.records[i])
    label = int(ex["label"])
    qa = src.label_qa(src.text_key_of(ex)) if src.has_vqa else []
    question, answer = qa[i % len(qa)] if qa else (None, None)
    out.append({
        "index": i,
        "image": _to_model(ex["image"], image_size, channels, frames),
        "label": label,
        "captions": src.captions_of(ex),
        "question": question,
        "answer": answer,
    })
  return out


def split_size(name: str, *, split: str, data_dir: str | None = None) -> int:
  """Number of examples in ``split``."""
  return len(open_source(name, split=split, data_dir=data_dir))


def iter_images(name: str, *, split: str, num: int | None = None, image_size: int = 8,
                channels: int = 1, data_dir: str | None = None, batch_size: int = 256):
  """The first ``num`` images of ``split`` in order, as the model sees them, in batches:
  float32 (<= batch_size, S, S, C) in [-1, 1]. Streams (one batch in memory at a time), so a
  50K-image reference split never has to fit."""
  src = open_source(name, split=split, data_dir=data_dir)
  n = len(src) if num is None else min(num, len(src))
  for start in range(0, n, batch_size):
    yield np.stack([images_lib.to_model_image(src.decode(src.records[i])["image"], image_size,
                                              channels)
                    for i in range(start, min(start + batch_size, n))])
