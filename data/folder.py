"""A local folder of images or clips, converted once to array_record and read by grain.

Accepted layouts of the source folder:

  class sub-folders   SRC/<class name>/**/<image>; label = index of the class
                      name in sorted order; captions come from the class names.
  captions.jsonl      SRC/captions.jsonl, one JSON object a line:
                      {"file": "relative/path.png", "caption": "...",
                       "label": 3 or "cat" (optional)}; a file on several
                      lines gets several captions.
  flat                images directly in SRC: unlabelled, no text.

Clips (``prepare(..., frames=T)``, for video configs): the captions.jsonl layout, each
'file' an animated image (GIF, WebP, APNG: every frame PIL reads) or a folder of frame images
(sorted by name). A clip keeps T frames, every ``frame_stride``-th frame of the window centred on
the clip; clips with fewer than (T - 1) * frame_stride + 1 frames are left out and counted.

`prepare(src, out, ...)` (also `python -m data.prepare`) writes
OUT/<split>.array_record (one record per image) and OUT/metadata.json. A record
is `uint32 little-endian header length | JSON header | PNG bytes`, the header
holding {"label": int, "captions": [str, ...], "file": str}: PNG keeps the
images lossless and the format needs neither TensorFlow nor pickle. Images with
an EXIF orientation tag (photos from cameras and phones) are stored upright. A
clip's record holds its T frames' PNGs one after another, the header's
"frame_bytes" their lengths.
"""

from __future__ import annotations

import collections
import io
import json
import os
import struct
from typing import Any
import zlib

from absl import logging
from PIL import Image
from PIL import ImageSequence

from data import images as images_lib
from data import source as source_lib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff")
CAPTIONS_FILE = "captions.jsonl"
METADATA_FILE = "metadata.json"
FORMAT = "mdm_jax.folder.v1"
_HEADER = struct.Struct("<I")


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_name(path: str) -> str:
  """`path` (from os.listdir/os.walk) if it is valid UTF-8; names that are not come back
  with surrogate escapes and could not be stored in the records' JSON headers."""
  try:
    path.encode("utf-8")
  except UnicodeEncodeError:
    raw = os.fsencode(path)
    raise ValueError(
        f"The file or folder name {raw!r} is not valid UTF-8 (shown as bytes); rename it, "
        "e.g. `convmv -f latin1 -t utf-8 --notest -r SRC`.") from None
  return path


def _images_under(root: str) -> list[str]:
  """Image paths under `root` (recursive), sorted, relative to `root`."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for f in filenames:
      if _is_image(f):
        found.append(_check_name(os.path.relpath(os.path.join(dirpath, f), root)))
  return sorted(found)


def _no_images(src: str) -> ValueError:
  return ValueError(
      f"No images found in {src}. Accepted extensions: "
      f"{', '.join(IMAGE_EXTENSIONS)} (any case). Put images in class "
      f"sub-folders (SRC/<class>/<image>), or list them in SRC/{CAPTIONS_FILE} "
      '({"file": ..., "caption": ..., "label": optional}).')


def scan(src: str) -> tuple[list[dict[str, Any]], tuple[str, ...] | None, str]:
  """Lists the examples of a source folder.

  Returns:
    entries: [{"file": relative path, "label": int, "captions": [str]}],
      sorted by file.
    class_names: label names, or None (unlabelled, or integer labels).
    layout: 'captions', 'classes' or 'flat'.
  """
  if not os.path.isdir(src):
    raise ValueError(f"Image folder {src} does not exist (or is not a "
                     "directory); pass an existing folder as --src.")
  captions_path = os.path.join(src, CAPTIONS_FILE)
  if os.path.exists(captions_path):
    return (*_scan_captions(src, captions_path), "captions")
  classes = sorted(_check_name(d) for d in os.listdir(src)
                   if os.path.isdir(os.path.join(src, d)))
  entries = []
  for label, name in enumerate(classes):
    for rel in _images_under(os.path.join(src, name)):
      entries.append({"file": os.path.join(name, rel), "label": label,
                      "captions": []})
  if entries:
    return entries, tuple(classes), "classes"
  flat = [f for f in sorted(os.listdir(src)) if _is_image(f)]
  if not flat:
    raise _no_images(src)
  logging.warning("%s has neither class sub-folders nor %s: %d unlabelled "
                  "images without text.", src, CAPTIONS_FILE, len(flat))
  return [{"file": f, "label": -1, "captions": []} for f in flat], None, "flat"


def _inside(src: str, file: str, where: str) -> str:
  """`file` normalised, if it is a relative path that stays inside `src`."""
  norm = os.path.normpath(file)
  if os.path.isabs(file) or norm == ".." or norm.startswith(".." + os.sep):
    raise ValueError(f"{where}: 'file' {file!r} points outside the source folder {src}; "
                     "give paths relative to it (no absolute paths, no '..').")
  return norm


def _scan_captions(src: str, path: str):
  by_file: dict[str, dict[str, Any]] = {}
  with open(path, "rb") as f:
    raw_lines = f.read().splitlines()
  for lineno, raw in enumerate(raw_lines, 1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(
          f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); re-save the "
          "file as UTF-8, e.g. `iconv -f latin1 -t utf-8`.") from None
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      file, caption = row["file"], row["caption"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(
          f"{path}:{lineno}: expected a JSON object with 'file' and "
          f"'caption' (and optionally 'label'), got {line.strip()[:200]!r} "
          f"({e}).") from e
    if not isinstance(file, str):
      raise ValueError(f"{path}:{lineno}: 'file' must be a string path.")
    file = _inside(src, file, f"{path}:{lineno}")
    if not isinstance(caption, str) or not caption.strip():
      raise ValueError(f"{path}:{lineno}: 'caption' must be a non-empty "
                       "string.")
    entry = by_file.setdefault(
        file, {"file": file, "label": row.get("label"), "captions": []})
    entry["captions"].append(caption.strip())
  if not by_file:
    raise _no_images(src)
  entries = [by_file[k] for k in sorted(by_file)]
  labels = [e["label"] for e in entries if e["label"] is not None]
  class_names = None
  if labels and all(isinstance(l, str) for l in labels):
    class_names = tuple(sorted(set(labels)))
    index = {n: i for i, n in enumerate(class_names)}
    for e in entries:
      e["label"] = -1 if e["label"] is None else index[e["label"]]
  elif all(isinstance(l, int) and l >= 0 for l in labels):
    for e in entries:
      e["label"] = -1 if e["label"] is None else e["label"]
  else:
    raise ValueError(f"{path}: 'label' must be all non-negative integers or "
                     "all strings (class names).")
  return entries, class_names


def encode_record(png: bytes | list[bytes], label: int, captions: list[str],
                  file: str) -> bytes:
  """One record: an image's PNG, or a clip's frames' PNGs (a list)."""
  fields = {"label": int(label), "captions": list(captions), "file": file}
  if isinstance(png, list):
    fields["frame_bytes"] = [len(p) for p in png]
    png = b"".join(png)
  header = json.dumps(fields).encode("utf-8")
  return _HEADER.pack(len(header)) + header + png


def decode_record(record: bytes) -> source_lib.Example:
  """A record -> Example; 'image' is a PIL image, or a clip's list of T PIL frames."""
  (n,) = _HEADER.unpack_from(record)
  header = json.loads(record[_HEADER.size:_HEADER.size + n])
  # Opened lazily: pixels are decoded only when the image is used.
  start = _HEADER.size + n
  if "frame_bytes" in header:
    image = []
    for size in header["frame_bytes"]:
      image.append(Image.open(io.BytesIO(record[start:start + size])))
      start += size
  else:
    image = Image.open(io.BytesIO(record[start:]))
  return {"image": image, "label": header["label"],
          "captions": tuple(header["captions"])}


def _clip_frames(path: str, frames: int, frame_stride: int) -> list[Image.Image] | None:
  """The clip's `frames` frames, every `frame_stride`-th of the centred window, loaded; None
  when the clip has too few. `path` is an animated image or a folder of frame images."""
  need = (frames - 1) * frame_stride + 1
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if _is_image(f))
    if len(files) < need:
      return None
    start = (len(files) - need) // 2
    out = []
    for f in files[start:start + need:frame_stride]:
      with Image.open(os.path.join(path, f)) as img:
        img.load()
        out.append(images_lib.upright(img)[0])
    return out
  with Image.open(path) as img:
    count = getattr(img, "n_frames", 1)
    if count < need:
      return None
    start = (count - need) // 2
    # Each frame converted to RGBA as it is reached: a GIF's later frames are drawn over the
    # earlier ones (PIL composites them on seek), and their palettes differ.
    return [f.convert("RGBA") for i, f in enumerate(ImageSequence.Iterator(img))
            if start <= i < start + need and (i - start) % frame_stride == 0]


def _split_of(file: str, test_fraction: float) -> str:
  # A hash of the path, not a random draw: adding images keeps old ones' split.
  in_test = zlib.crc32(file.encode()) / 2**32 < test_fraction
  return "test" if in_test else "train"


def prepare(src: str, out: str, *, image_size: int | None = None,
            channels: int = 3, test_fraction: float = 0.0, frames: int | None = None,
            frame_stride: int = 1) -> dict[str, Any]:
  """Converts an image (or clip) folder to array_record files plus metadata.json.

  Args:
    src: the image folder (see the module docstring for layouts).
    out: output folder (created).
    image_size: if set, images are centre-cropped to a square and resized to
      image_size x image_size here, once; else kept as they are.
    channels: 1 (grey) or 3 (RGB); other modes (RGBA, grey, palette) are
      converted and counted.
    test_fraction: share of images (by a hash of the path) in a 'test' split.
    frames: None for images; T >= 2: each listed file is a clip (see the module
      docstring), stored as T frames.
    frame_stride: keep every frame_stride-th frame of a clip.

  Returns:
    stats: {'images': written, 'converted': images whose channels changed,
    'converted_from': {mode: count}, 'unreadable': [(file, reason)],
    'uncaptioned': images in SRC that captions.jsonl does not list (left out),
    'transposed': images turned upright by their EXIF orientation tag,
    'splits': {split: count}, 'layout': ..., 'num_classes': ...; for clips
    'too_short': clips with too few frames (left out)}; also written to
    OUT/metadata.json.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  images_lib.check_channels(channels)
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction} must be in [0, 1).")
  if frames is not None and (frames < 2 or frame_stride < 1):
    raise ValueError(f"frames={frames}, frame_stride={frame_stride}: a clip has at least 2 "
                     "frames and a stride of at least 1 (leave frames unset for images).")
  entries, class_names, layout = scan(src)
  if frames is not None and layout != "captions":
    raise ValueError(f"{src}: clips (frames={frames}) are listed in SRC/{CAPTIONS_FILE} "
                     '({"file": clip, "caption": ...}, a clip being an animated image or a '
                     f"folder of frames); {src} has the {layout!r} layout.")
  uncaptioned = 0
  if layout == "captions" and frames is None:
    listed = {e["file"] for e in entries}
    uncaptioned = sum(1 for f in _images_under(src) if f not in listed)
    if uncaptioned:
      logging.warning("%d images in %s are not listed in %s and are left out.", uncaptioned,
                      src, CAPTIONS_FILE)
  os.makedirs(out, exist_ok=True)
  writers, counts = {}, collections.Counter()
  converted_from, unreadable, transposed = collections.Counter(), [], 0
  too_short = []

  def to_png(img: Image.Image) -> bytes:
    mode = img.mode
    img, changed = images_lib.convert_mode(img, channels)
    if changed:
      converted_from[mode] += 1
    if image_size:
      img = images_lib.center_square(img).resize(
          (image_size, image_size), Image.Resampling.BICUBIC)
    png = io.BytesIO()
    img.save(png, format="PNG")
    return png.getvalue()

  try:
    for e in entries:
      path = os.path.join(src, e["file"])
      try:
        if frames is None:
          with Image.open(path) as img:
            img.load()
            img, turned = images_lib.upright(img)
            transposed += turned
            data = to_png(img)
        else:
          clip = _clip_frames(path, frames, frame_stride)
          if clip is None:
            too_short.append(e["file"])
            continue
          data = [to_png(f) for f in clip]
      except (OSError, ValueError, Image.DecompressionBombError) as err:
        unreadable.append((e["file"], f"{type(err).__name__}: {err}"))
        logging.warning("Skipping unreadable %s %s: %s", "image" if frames is None else "clip",
                        path, err)
        continue
      split = _split_of(e["file"], test_fraction)
      if split not in writers:
        writers[split] = array_record_module.ArrayRecordWriter(
            os.path.join(out, f"{split}.array_record"), "group_size:1")
      writers[split].write(encode_record(data, e["label"], e["captions"], e["file"]))
      counts[split] += 1
  finally:
    for w in writers.values():
      w.close()
  if too_short:
    logging.warning("Left out %d clips with fewer than %d frames (frames=%d, frame_stride=%d), "
                    "e.g. %s.", len(too_short), (frames - 1) * frame_stride + 1, frames,
                    frame_stride, too_short[:3])
  if not counts:
    raise ValueError(f"None of the {len(entries)} {'images' if frames is None else 'clips'} "
                     f"in {src} could be read: unreadable {unreadable[:5]}, too short "
                     f"{too_short[:5]} (frames={frames}, frame_stride={frame_stride}).")
  labels = [e["label"] for e in entries]
  stats = {
      "images": sum(counts.values()),
      "converted": sum(converted_from.values()),
      "converted_from": dict(converted_from),
      "unreadable": unreadable,
      "uncaptioned": uncaptioned,
      "transposed": transposed,
      "splits": dict(counts),
      "layout": layout,
      "num_classes": (len(class_names) if class_names else
                      max(labels) + 1 if max(labels) >= 0 else 0),
  }
  if frames is not None:
    stats.update(frames=frames, frame_stride=frame_stride, too_short=len(too_short))
  if transposed:
    logging.info("Turned %d images upright as their EXIF orientation tag says.", transposed)
  if stats["converted"]:
    logging.warning("Converted %d images to %d channels (from %s).",
                    stats["converted"], channels, dict(converted_from))
  metadata = {"format": FORMAT, "class_names": class_names,
              "has_captions": layout == "captions", "channels": channels,
              "image_size": image_size, "source": os.path.abspath(src),
              **stats}
  with open(os.path.join(out, METADATA_FILE), "w", encoding="utf-8") as f:
    json.dump(metadata, f, indent=2)
  logging.info("Prepared %s -> %s: %s", src, out, stats)
  return stats


def read_metadata(data_dir: str) -> dict[str, Any]:
  path = os.path.join(data_dir or "", METADATA_FILE)
  if not data_dir or not os.path.exists(path):
    raise ValueError(
        f"No prepared image folder at {data_dir!r} ({METADATA_FILE} missing). "
        "Convert the folder first: python -m data.prepare --src=IMAGES "
        "--out=DIR, then pass data_dir=DIR.")
  with open(path, encoding="utf-8") as f:
    metadata = json.load(f)
  if metadata.get("format") != FORMAT:
    raise ValueError(f"{path} is not a {FORMAT} metadata file.")
  return metadata


def open_folder(data_dir: str, *, split: str) -> source_lib.ExampleSource:
  """An `ExampleSource` over a folder written by `prepare`."""
  import grain  # pylint: disable=g-import-not-at-top
  metadata = read_metadata(data_dir)
  if split not in metadata["splits"]:
    raise ValueError(f"Prepared folder {data_dir} has no split {split!r}; it "
                     f"has {sorted(metadata['splits'])}.")
  records = grain.sources.ArrayRecordDataSource(
      [os.path.join(data_dir, f"{split}.array_record")])
  class_names = metadata["class_names"]
  # Class names become captions only when the examples have none of their own.
  label_text = ("class_name" if class_names and not metadata["has_captions"]
                else None)
  return source_lib.ExampleSource(
      name=f"folder:{data_dir}", records=records, decode=decode_record,
      num_classes=metadata["num_classes"],
      class_names=tuple(class_names) if class_names else None,
      label_text=label_text, has_captions=metadata["has_captions"],
      frames=metadata.get("frames") or 1)

