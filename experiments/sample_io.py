"""Writing what people look at: PNG sample grids, and the sample file formats.

Image outputs: ``.npz`` with ``images`` (uint8 NHWC) plus ``labels`` and/or ``prompts``.
Text outputs: ``.jsonl``, one object per sample: ``index``, ``label``, ``question`` and
``reference`` (the dataset's own answer) where there are ones, and ``text``.
"""
from __future__ import annotations

import io
import json
import math
from typing import Optional, Sequence

from etils import epath
import numpy as np
from PIL import Image

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
  x = to_uint8(images)
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
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  _write(path, buf.getvalue())
  return path


def save_npz(path: str, images, *, labels=None, prompts: Optional[Sequence[str]] = None) -> str:
  arrays = {"images": to_uint8(images)}
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
