"""What every dataset adapter hands the pipeline: records and how to read them.

An adapter (tfds, local folder, digits) opens its storage and returns an
`ExampleSource`: a random-access sequence of raw records (grain reads it by
index) and a picklable `decode` turning one record into an `Example`. The
pipeline then does the same image and text processing for every dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any, Literal, TypedDict

import numpy as np
from PIL import Image

from data import text_templates


class Example(TypedDict, total=False):
  image: np.ndarray | Image.Image  # uint8 (H, W[, C]) or a decoded PIL image; a clip
                                   # dataset's: uint8 (T, H, W, C)
  label: int                       # -1 when the dataset has no labels
  captions: Sequence[str]          # the dataset's own captions; may be empty
  text_key: int                    # which label-made text (see `ExampleSource.text_keys`);
                                   # absent: the label


# Text made from the label: 'digit' -> digit captions and VQA pairs,
# 'class_name' -> captions from class names, 'moving_digit' -> captions and VQA
# pairs of a moving digit, from its text key (label * 4 + direction), None -> no
# text from the label.
LabelText = Literal["digit", "class_name", "moving_digit"] | None


@dataclasses.dataclass(frozen=True)
class ExampleSource:
  """A dataset split as the pipeline sees it.

  Attributes:
    name: dataset name, for messages.
    records: random-access raw records (len() and [i]); grain reads by index.
    decode: record -> Example; picklable (module-level function or partial).
    num_classes: number of labels (0 when unlabelled).
    class_names: label names (None when unknown).
    label_text: text made from the label (see `LabelText`).
    has_captions: True when examples carry their own captions.
    in_memory: (uint8 images (N, H, W[, C]), int labels (N,)) when the whole
      split is already in memory (the pipeline then converts every image once
      and builds a batch with one gather).
    frames: 1 for images; T for a clip dataset, whose images are uint8
      clips (T, H, W, C).
    text_keys: int (N,) the label-made text of each record when it depends on
      more than the label (moving digits: label * 4 + direction; its decoded
      examples carry it as 'text_key'); None: the label.
  """
  name: str
  records: Sequence[Any]
  decode: Callable[[Any], Example]
  num_classes: int
  class_names: tuple[str, ...] | None
  label_text: LabelText
  has_captions: bool
  in_memory: tuple[np.ndarray, np.ndarray] | None = None
  frames: int = 1
  text_keys: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.records)

  @property
  def has_caption_text(self) -> bool:
    return self.has_captions or self.label_text is not None

  @property
  def has_vqa(self) -> bool:
    return self.label_text in ("digit", "moving_digit")

  @property
  def num_text_keys(self) -> int:
    """How many label-made texts there are (keys 0 .. num_text_keys - 1)."""
    if self.label_text == "moving_digit":
      return self.num_classes * len(text_templates.MOTION_DIRECTIONS)
    return self.num_classes if self.label_text else 0

  def label_captions(self, key: int) -> list[str]:
    """Captions made from text key `key` (the label, or see `text_keys`; []
    when the dataset makes none)."""
    if self.label_text == "digit":
      return text_templates.digit_captions(key)
    if self.label_text == "class_name":
      return text_templates.class_captions(self.class_names[key])
    if self.label_text == "moving_digit":
      return text_templates.video_captions(*divmod(key, len(text_templates.MOTION_DIRECTIONS)))
    return []

  def label_qa(self, key: int) -> list[tuple[str, str]]:
    """VQA pairs made from text key `key` ([] when the dataset makes none)."""
    if self.label_text == "digit":
      return text_templates.digit_qa(key)
    if self.label_text == "moving_digit":
      return text_templates.video_qa(*divmod(key, len(text_templates.MOTION_DIRECTIONS)))
    return []

  def text_key_of(self, example: Example) -> int:
    """The text key of one decoded example (its label unless it carries one)."""
    return int(example.get("text_key", example["label"]))

  def captions_of(self, example: Example) -> list[str]:
    """Every caption of one example: its own, else those made from its label."""
    if self.has_captions:
      return list(example["captions"])
    if self.label_text is not None and example["label"] >= 0:
      return self.label_captions(self.text_key_of(example))
    return []
