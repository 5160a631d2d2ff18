"""Text made from a class label: captions and question/answer pairs.

Datasets whose only annotation is a label (the bundled digits, MNIST, CIFAR-10,
a folder of class sub-folders) get captions from templates so that the
text-to-image and captioning tasks have data. Digit datasets also get VQA pairs
whose answers the label determines: one canonical answer per question type
(the digit's word for "which digit" questions, "yes"/"no" for properties).
Moving-digit clips (`data.moving_digits`) get captions and VQA pairs from their
digit and their direction of motion the same way.
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


# Directions of motion of a moving-digit clip, in image coordinates (up = towards row 0).
MOTION_DIRECTIONS = ("up", "down", "left", "right")

# {word}/{num} as above, {dir}: one of MOTION_DIRECTIONS. The digit leads every template, as in
# DIGIT_CAPTION_TEMPLATES and for the same reason, and the direction, the clip's other word that
# only the pixels decide, is always the third word (after one varied verb); what follows varies.
VIDEO_CAPTION_TEMPLATES = (
    "{word} moving {dir}",
    "{num} moves {dir} across the frame",
    "{word} drifting {dir}",
    "{word} slides {dir} in a small clip",
    "{num} going {dir}, a handwritten digit",
    "{word} travels {dir} over a dark background",
    "{word} heading {dir}",
    "{num} drifts {dir} frame by frame",
    "{word} glides {dir} slowly",
    "{word} moving {dir}, hand drawn",
)

# (question, answer as a function of the digit and the direction's word); the digit's own
# questions (DIGIT_QA_TEMPLATES) are asked of clips too.
VIDEO_QA_TEMPLATES = (
    ("what digit is moving?", lambda d, m: DIGIT_WORDS[d]),
    ("which digit is in the clip?", lambda d, m: DIGIT_WORDS[d]),
    ("which way does the digit move?", lambda d, m: m),
    ("in which direction is it moving?", lambda d, m: m),
    ("does it move vertically?", lambda d, m: _yes_no(m in ("up", "down"))),
    ("does it move horizontally?", lambda d, m: _yes_no(m in ("left", "right"))),
    ("is it moving up?", lambda d, m: _yes_no(m == "up")),
    ("is it moving left?", lambda d, m: _yes_no(m == "left")),
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


def _check_direction(direction: int) -> str:
  direction = int(direction)
  if not 0 <= direction < len(MOTION_DIRECTIONS):
    raise ValueError(f"A direction must be an index in 0..{len(MOTION_DIRECTIONS) - 1} into "
                     f"{MOTION_DIRECTIONS}, got {direction}.")
  return MOTION_DIRECTIONS[direction]


def video_captions(label: int, direction: int) -> list[str]:
  """All caption variants of a clip of digit `label` moving in MOTION_DIRECTIONS[direction]."""
  d, m = _check_digit(label), _check_direction(direction)
  return [t.format(word=DIGIT_WORDS[d], num=d, dir=m) for t in VIDEO_CAPTION_TEMPLATES]


def video_qa(label: int, direction: int) -> list[tuple[str, str]]:
  """All (question, answer) pairs of such a clip: its motion's, then the digit's own."""
  d, m = _check_digit(label), _check_direction(direction)
  return [(q, answer(d, m)) for q, answer in VIDEO_QA_TEMPLATES] + digit_qa(d)


def class_captions(name: str) -> list[str]:
  """All caption variants of a class called `name`."""
  name = name.replace("_", " ").strip()
  return [t.format(name=name) for t in CLASS_CAPTION_TEMPLATES]
