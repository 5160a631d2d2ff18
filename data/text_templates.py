"""Text made from a class label: captions and question/answer pairs.

Datasets whose only annotation is a label (the bundled digits, MNIST, CIFAR-10,
a folder of class sub-folders) get captions from templates so that the
text-to-image and captioning tasks have data. Digit datasets also get VQA pairs
whose answers the label determines: one canonical answer per question type
(the digit's word for "which digit" questions, "yes"/"no" for properties).
"""

from __future__ import annotations

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
               "eight", "nine")

# {word}: "seven", {num}: "7". The digit leads every caption and the templates vary what
# follows: the caption's first token is then the one the image decides, at a fixed place. With
# the digit at a template-dependent place (e.g. "a handwritten digit seven", "the number 7
# written by hand"), the default run learns the ten templates but not the digit within its
# budget (docs/findings.md, "Where the image-dependent word sits").
DIGIT_CAPTION_TEMPLATES = (
    "{word}, a handwritten digit",
    "{num} written by hand",
    "{word} in a small grey picture",
    "{word}, hand drawn",
    "{num}, an image of a digit",
    "{word} in low resolution",
    "{num}, a blurry handwritten number",
    "{word} as a pixelated number",
    "{word}, as someone wrote it",
    "{word} in a tiny scan",
)

_PRIMES = (2, 3, 5, 7)


def _yes_no(flag: bool) -> str:
  return "yes" if flag else "no"


# (question, answer as a function of the label).
DIGIT_QA_TEMPLATES = (
    ("what digit is this?", lambda d: DIGIT_WORDS[d]),
    ("what number is shown?", lambda d: DIGIT_WORDS[d]),
    ("which digit is written here?", lambda d: DIGIT_WORDS[d]),
    ("is the digit even?", lambda d: _yes_no(d % 2 == 0)),
    ("is the digit odd?", lambda d: _yes_no(d % 2 == 1)),
    ("is it larger than five?", lambda d: _yes_no(d > 5)),
    ("is it smaller than five?", lambda d: _yes_no(d < 5)),
    ("is it a prime number?", lambda d: _yes_no(d in _PRIMES)),
)

# {name}: a class name such as "airplane" (underscores become spaces).
CLASS_CAPTION_TEMPLATES = (
    "a photo of a {name}",
    "a picture of a {name}",
    "an image showing a {name}",
    "a small photo of the {name}",
    "a {name} in the picture",
    "a close up photo of a {name}",
    "a low resolution photo of a {name}",
    "a blurry image of a {name}",
)


def _check_digit(label: int) -> int:
  label = int(label)
  if not 0 <= label <= 9:
    raise ValueError(f"A digit label must be in 0..9, got {label}.")
  return label


def digit_captions(label: int) -> list[str]:
  """All caption variants of digit `label` (one per template)."""
  d = _check_digit(label)
  return [t.format(word=DIGIT_WORDS[d], num=d) for t in DIGIT_CAPTION_TEMPLATES]


def digit_qa(label: int) -> list[tuple[str, str]]:
  """All (question, answer) pairs of digit `label` (one per question type)."""
  d = _check_digit(label)
  return [(q, answer(d)) for q, answer in DIGIT_QA_TEMPLATES]


def class_captions(name: str) -> list[str]:
  """All caption variants of a class called `name`."""
  name = name.replace("_", " ").strip()
  return [t.format(name=name) for t in CLASS_CAPTION_TEMPLATES]
