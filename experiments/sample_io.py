"""Writing what people look at: PNG sample grids, the sample file formats, and the lock that
keeps one sampling process per output.

Image outputs: ``.npz`` with ``images`` (uint8 NHWC) plus ``labels`` and/or ``prompts``; a clip
model's: ``videos`` (uint8 (N, T, H, W, C)) and an animated GIF grid.
Text outputs: ``.jsonl``, one object per sample: ``index``, ``label``, ``question`` and
``reference`` (the dataset's own answer) where there are ones, and ``text``.
"""
from __future__ import annotations

import fcntl
import io
import json
import math
import os
import socket
import time
from typing import Optional, Sequence

from absl import logging
from etils import epath
import numpy as np
from PIL import Image

from mdm_jax.training.paths import is_local

# Inpainting in time, for a clip model: the first half of the frames given, the rest generated
# (video prediction); the first and last frames given, those between generated (interpolation).
# Read by `experiments.sample` and `experiments.evaluate`.
FRAME_TASKS = ("predict", "interpolate")


def kept_frames(task: str, frames: int) -> np.ndarray:
  """bool (frames,), True for the frames of a clip that ``task`` (one of ``FRAME_TASKS``) keeps:
  ``predict`` the first ``frames // 2``, ``interpolate`` the first and the last."""
  if task not in FRAME_TASKS:
    raise ValueError(f"unknown frame task {task!r}; use one of {FRAME_TASKS}")
  if frames < 2:
    raise ValueError(f"{task} generates frames of a clip and needs frames >= 2, got {frames}")
  kept = np.zeros(frames, bool)
  if task == "predict":
    kept[:frames // 2] = True
  else:
    kept[[0, -1]] = True
  return kept


# Every writer takes a local path or any `etils.epath` path (gs://, ...) and creates its folder.


def to_uint8(images) -> np.ndarray:
  """Images in [-1, 1] (any float) -> uint8 in [0, 255]; uint8 images are returned as they are."""
  if np.asarray(images).dtype == np.uint8:
    return np.asarray(images)
  x = np.asarray(images, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(images, path: str, *, nrow: Optional[int] = None, upscale: int = 1,
              pad: int = 1) -> str:
  """Tile images (N, H, W, C) in [-1, 1] (or uint8) into one PNG with ``nrow`` images per row."""
  buf = io.BytesIO()
  _grid_image(to_uint8(images), nrow, upscale, pad).save(buf, format="PNG")
  _write(path, buf.getvalue())
  return path


def save_gif_grid(clips, path: str, *, nrow: Optional[int] = None, upscale: int = 1,
                  pad: int = 1, frame_ms: int = 200) -> str:
  """Tile clips (N, T, H, W, C) in [-1, 1] (or uint8) into one animated GIF that loops: frame
  t is the grid (``save_grid``'s layout) of every clip's frame t. GIF keeps 256 colours a
  frame, plenty for these grids; Pillow folds a frame identical to the one before into that
  frame's duration, so a still clip gives fewer frames."""
  x = to_uint8(clips)
  frames = [_grid_image(x[:, t], nrow, upscale, pad) for t in range(x.shape[1])]
  buf = io.BytesIO()
  frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                 duration=frame_ms, loop=0)
  _write(path, buf.getvalue())
  return path


def save_visual_grid(images, stem: str, **kw) -> str:
  """``save_grid`` to ``stem.png`` for images (N, H, W, C), ``save_gif_grid`` to ``stem.gif``
  for clips (N, T, H, W, C). Returns the path written."""
  if np.ndim(images) == 5:
    return save_gif_grid(images, f"{stem}.gif", **kw)
  return save_grid(images, f"{stem}.png", **kw)


def _grid_image(x: np.ndarray, nrow: Optional[int], upscale: int, pad: int) -> Image.Image:
  """uint8 (N, H, W, C) -> one PIL image, ``nrow`` images a row, grey padding."""
  n, h, w, c = x.shape
  nrow = nrow or int(math.ceil(math.sqrt(n)))
  ncol = int(math.ceil(n / nrow))
  canvas = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 128, np.uint8)
  for i in range(n):
    r, q = divmod(i, nrow)
    canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
           pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
  img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
  return img


def save_npz(path: str, images, *, labels=None, prompts: Optional[Sequence[str]] = None) -> str:
  """``images`` uint8 (N, H, W, C), or ``videos`` uint8 (N, T, H, W, C) for clips, plus
  ``labels`` / ``prompts`` when given."""
  key = "videos" if np.ndim(images) == 5 else "images"
  arrays = {key: to_uint8(images)}
  if labels is not None:
    arrays["labels"] = np.asarray(labels)
  if prompts is not None:
    arrays["prompts"] = np.asarray(list(prompts))
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  _write(path, buf.getvalue())
  return path


def save_jsonl(path: str, rows: Sequence[dict]) -> str:
  return save_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def save_text(path: str, text: str) -> str:
  _write(path, text.encode("utf-8"))
  return path


def _write(path: str, data: bytes) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


class OutputLockedError(RuntimeError):
  """Another live process writes the same output."""


class OutputLock:
  """One writer per output: ``<stem>.lock`` beside it, held with ``fcntl.flock`` while the
  process samples (``with OutputLock(path): ...``).

  The kernel releases a flock when its holder dies, so a killed run leaves no stale lock to
  clear (the file itself is removed on release; a file left by a SIGKILL is simply taken).
  Object stores (gs://) have no locks: there none is taken, with a warning.
  """

  def __init__(self, path):
    self.path = epath.Path(path)
    self._fd = None

  def _holder(self, fd) -> str:
    try:
      return os.pread(fd, 400, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
      return "unknown"

  def acquire(self) -> None:
    if not is_local(self.path):
      logging.warning("%s is on an object store, which has no file locks: nothing stops a "
                      "second sampling process writing the same --out there", self.path)
      return
    local = os.fspath(self.path)
    os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
    for _ in range(3):
      fd = os.open(local, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = self._holder(fd)
        os.close(fd)
        raise OutputLockedError(
            f"another sampling process writes this output (lock {local}, held by {holder}): "
            "two writers of one --out would overwrite each other's batches. Wait for it to "
            "finish, stop it, or pass another --out") from None
      try:   # the holder we waited on may have removed the file: lock the one at the path
        same = os.stat(local).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return
      os.close(fd)
    raise OutputLockedError(f"could not take the output lock {local}; try again")

  def release(self) -> None:
    if self._fd is not None:
      os.unlink(os.fspath(self.path))   # while still held: a waiter then retries on a new file
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "OutputLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
