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


class Example(TypedDict):
  image: np.ndarray | Image.Image  # uint8 (H, W[, C]) or a decoded PIL image
  label: int                       # -1 when the dataset has no labels
  captions: Sequence[str]          # the dataset's own captions; may be empty


# Text made from the label: 'digit' -> digit captions and VQA pairs,
# 'class_name' -> captions from class names, None -> no text from the label.
LabelText = Literal["digit", "class_name"] | None


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
  """
  name: str
  records: Sequence[Any]
  decode: Callable[[Any], Example]
  num_classes: int
  class_names: tuple[str, ...] | None
  label_text: LabelText
  has_captions: bool
  in_memory: tuple[np.ndarray, np.ndarray] | None = None

  def __len__(self) -> int:
    return len(self.records)

  @property
  def has_caption_text(self) -> bool:
    return self.has_captions or self.label_text is not None

  @property
  def has_vqa(self) -> bool:
    return self.label_text == "digit"

  def label_captions(self, label: int) -> list[str]:
    """Captions made from `label` ([] when the dataset makes none)."""
    if self.label_text == "digit":
      return text_templates.digit_captions(label)
    if self.label_text == "class_name":
      return text_templates.class_captions(self.class_names[label])
    return []

  def label_qa(self, label: int) -> list[tuple[str, str]]:
    """VQA pairs made from `label` ([] when the dataset makes none)."""
    return text_templates.digit_qa(label) if self.has_vqa else []

  def captions_of(self, example: Example) -> list[str]:
    """Every caption of one example: its own, else those made from its label."""
    if self.has_captions:
      return list(example["captions"])
    if self.label_text is not None and example["label"] >= 0:
      return self.label_captions(example["label"])
    return []
