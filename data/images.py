"""Image conversions shared by every source: channels, size, value range.

The model sees float32 (H, W, C) images in [-1, 1]; sources hold uint8 images
of any size with 1, 3 or 4 channels.
"""

from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image, ImageOps

_MODES = {1: "L", 3: "RGB"}


def check_channels(channels: int) -> int:
  if channels not in _MODES:
    raise ValueError(f"channels={channels} is not supported; use 1 (grey) or "
                     "3 (RGB).")
  return channels


# Integer modes wider than 8 bits: PIL's own convert("L") clips them at 255 (a 16-bit
# image becomes nearly solid white), so they are rescaled from their full range instead.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _wide_to_grey(img: Image.Image) -> Image.Image:
  """A 16-bit grey image (PIL modes I;16*, or I holding 16-bit values) as 8-bit L:
  round(v * 255 / 65535), i.e. the nearest 8-bit level."""
  values = np.asarray(img, dtype=np.int64)
  if values.min() < 0 or values.max() > 65535:
    raise ValueError(f"mode {img.mode} image has values in [{values.min()}, {values.max()}],"
                     " outside the 16-bit range [0, 65535]; convert it to 8 or 16 bits first.")
  return Image.fromarray(np.round(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")


def convert_mode(img: Image.Image, channels: int) -> tuple[Image.Image, bool]:
  """`img` in the mode of `channels` (L or RGB); True if it had to change.

  Transparent pixels are composited on white (dropping alpha would show the
  arbitrary colours stored under them); grey to RGB repeats the value; RGB to
  grey uses PIL's ITU-R 601 luma; 16-bit grey is scaled to 8 bits over its full
  range. Floating-point images (mode F) have no agreed range and are refused.
  """
  mode = _MODES[check_channels(channels)]
  if img.mode == mode:
    return img, False
  if img.mode == "F":
    raise ValueError("floating-point (mode F) images have no fixed value range; save them "
                     "as 8- or 16-bit PNG/TIFF first.")
  if img.mode in _WIDE_INTEGER_MODES:
    grey = _wide_to_grey(img)
    return (grey if mode == "L" else grey.convert(mode)), True
  if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and
                                         "transparency" in img.info):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    img = Image.alpha_composite(background, rgba)
  return img.convert(mode), True


def upright(img: Image.Image) -> tuple[Image.Image, bool]:
  """`img` turned as its EXIF orientation tag says (cameras and phones store pixels as the
  sensor read them and record the turn there), and whether it had to turn. PIL's
  `ImageOps.exif_transpose` does the turn; no tag, or orientation 1, leaves `img` as it is."""
  orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
  if orientation in (None, 1):
    return img, False
  return ImageOps.exif_transpose(img), True


def center_square(img: Image.Image) -> Image.Image:
  """The largest centred square crop (no-op for square images)."""
  w, h = img.size
  if w == h:
    return img
  s = min(w, h)
  left, top = (w - s) // 2, (h - s) // 2
  return img.crop((left, top, left + s, top + s))


def to_pil(array: np.ndarray) -> Image.Image:
  """A uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as a PIL image."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"Expected a uint8 image, got {array.dtype}.")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and
                                  array.shape[-1] not in (3, 4)):
    raise ValueError(f"Expected an (H, W[, 1|3|4]) image, got {array.shape}.")
  return Image.fromarray(array)


def to_model_image(image: np.ndarray | Image.Image, image_size: int,
                   channels: int) -> np.ndarray:
  """Centre-crops, resizes and scales an image for the model.

  Args:
    image: uint8 (H, W[, C]) array or a PIL image, any size or channel count.
    image_size: side S of the square output.
    channels: C of the output, 1 or 3.

  Returns:
    float32 (S, S, C) in [-1, 1] (uint8 0 -> -1, 255 -> 1).
  """
  img = image if isinstance(image, Image.Image) else to_pil(image)
  img, _ = convert_mode(img, channels)
  img = center_square(img)
  if img.size != (image_size, image_size):
    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
  out = np.asarray(img, np.float32).reshape(image_size, image_size, channels)
  return out * (2.0 / 255.0) - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Model images in [-1, 1] (any shape) back to uint8 [0, 255]."""
  return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0,
                 255).astype(np.uint8)
