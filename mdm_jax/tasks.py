"""The task table: what each task does with the image, the text and the class.

One network serves every task; a task is only a choice of which modality is noised, held
clean or absent, and where the losses apply. The loss (``losses``), generation (``generate``),
the sampling CLI, the evaluation and the trainer's sample writer all read this table:

  task        image            text                          class  generate needs        outputs
  class2img   noised           absent                        label  -                     image
  t2i         noised           clean (caption)               null   text                  image
  caption     clean            noised (caption)              null   images                text
  vqa         clean            prompt + noised (vqa data)    null   images, text, prompt_len  text
  joint       noised           noised (caption)              null   -                     both
  text        absent           noised (caption)              null   -                     text
  inpaint     known + noised   absent                        label  images, image_mask    image

Roles: ``noised`` is diffused (t ~ U in training, generated from t = 1) and gets the diffusion
loss; ``clean`` is held at t = 0 (given); ``absent`` is fed fully noised (t = 1: Gaussian noise /
all [MASK]) and gets no loss; ``prompt`` is a clean prefix of ``prompt_len`` tokens followed by
a noised answer (loss on the answer only); ``known`` (inpainting) is held clean where
``image_mask`` is True and generated elsewhere. ``inpaint`` is a generation-only task: the
network sees class2img's task id. Tasks whose text is ``noised`` also take a ``text_mask``
(infilling: the given positions are held clean).

``dropped`` is the condition that classifier-free guidance drops (training: with probability
``cond_drop``; sampling: the unconditional call): the class (to the null class) or the caption
(to absent).

This module imports nothing from the models, so the models may import it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np

NOISED, CLEAN, ABSENT, PROMPT, KNOWN = "noised", "clean", "absent", "prompt", "known"
IMAGE_ROLES = (NOISED, CLEAN, ABSENT, KNOWN)
TEXT_ROLES = (NOISED, CLEAN, ABSENT, PROMPT)


@dataclasses.dataclass(frozen=True)
class Task:
  """One row of the task table (module docstring).

  Attributes:
    name: the task's one spelling.
    image, text: the role of each modality (``IMAGE_ROLES`` / ``TEXT_ROLES``).
    uses_class: the class label is given (else the null class).
    needs: the inputs ``generate`` needs.
    outputs: what generation produces: a subset of ("image", "text").
    network_task: the task id the network sees (``TASK_IDS``); itself for trained tasks.
    dropped: the condition guidance drops: "class", "caption" or None (no guidance).
  """
  name: str
  image: str
  text: str
  uses_class: bool
  needs: tuple[str, ...]
  outputs: tuple[str, ...]
  network_task: str
  dropped: Optional[str] = None

  def __post_init__(self):
    if self.image not in IMAGE_ROLES or self.text not in TEXT_ROLES:
      raise ValueError(f"task {self.name!r}: roles must be in {IMAGE_ROLES} / {TEXT_ROLES}")

  @property
  def trained(self) -> bool:
    return self.network_task == self.name

  @property
  def text_data(self) -> Optional[str]:
    """The batch key its training text comes from (None: text absent)."""
    return {ABSENT: None, PROMPT: "vqa"}.get(self.text, "caption")

  @property
  def image_loss(self) -> bool:
    return self.image == NOISED

  @property
  def text_loss(self) -> bool:
    return self.text in (NOISED, PROMPT)

  @property
  def infills(self) -> bool:
    """Takes a ``text_mask`` (text infilling)."""
    return self.text == NOISED


_TABLE = (
    Task("class2img", NOISED, ABSENT, True, (), ("image",), "class2img", dropped="class"),
    Task("t2i", NOISED, CLEAN, False, ("text",), ("image",), "t2i", dropped="caption"),
    Task("caption", CLEAN, NOISED, False, ("images",), ("text",), "caption"),
    Task("vqa", CLEAN, PROMPT, False, ("images", "text", "prompt_len"), ("text",), "vqa"),
    Task("joint", NOISED, NOISED, False, (), ("image", "text"), "joint"),
    Task("text", ABSENT, NOISED, False, (), ("text",), "text"),
    Task("inpaint", KNOWN, ABSENT, True, ("images", "image_mask"), ("image",), "class2img",
         dropped="class"),
)
SPECS = {t.name: t for t in _TABLE}
TASKS = tuple(t.name for t in _TABLE if t.trained)        # the network's task ids, in order
TASK_IDS = {name: i for i, name in enumerate(TASKS)}
GEN_TASKS = tuple(SPECS)
ALIASES = {"class": "class2img"}                            # CLI spellings
# Inpainting in time, for a clip model: video prediction keeps the first half of each clip's
# frames and generates the rest; interpolation keeps the first and the last frame.
FRAME_TASKS = ("predict", "interpolate")


def get(name: str) -> Task:
  """The spec of ``name`` (a task or an alias); a clear error otherwise."""
  name = ALIASES.get(name, name)
  if name not in SPECS:
    raise ValueError(f"unknown task {name!r}; choose one of {GEN_TASKS}")
  return SPECS[name]


def frame_mask(task: str, frames: int) -> np.ndarray:
  """bool (frames, 1, 1), True for the frames KEPT of each clip by ``task`` (a
  ``FRAME_TASKS`` entry): ``predict`` the first ``frames // 2``, ``interpolate`` the first and
  the last. Both generate as ``inpaint`` with this mask broadcast over the frames' pixels."""
  if task not in FRAME_TASKS:
    raise ValueError(f"unknown frame task {task!r}; choose one of {FRAME_TASKS}")
  if frames < 2:
    raise ValueError(f"{task} generates frames of a clip, but this model has "
                     f"model.frames={frames} (images)")
  m = np.zeros((frames, 1, 1), bool)
  if task == "predict":
    m[:frames // 2] = True
  else:
    m[[0, -1]] = True
  return m


def servable(data_keys: Iterable[str]) -> tuple[str, ...]:
  """The trained tasks that data with these batch keys can train: without ``caption`` the text
  is absent everywhere (class2img alone); VQA also needs ``vqa``."""
  keys = set(data_keys)
  has_text = "caption" in keys
  return tuple(n for n in TASKS
               if SPECS[n].text_data is None or (has_text and SPECS[n].text_data in keys))


def trained_tasks(task_weights: Sequence[float], data_keys: Iterable[str]) -> tuple[str, ...]:
  """The tasks a run trains: weight > 0 (``loss.task_weights``, ``TASKS`` order) and
  servable by its data."""
  ok = servable(data_keys)
  return tuple(n for n, w in zip(TASKS, task_weights) if w > 0 and n in ok)
