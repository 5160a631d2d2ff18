"""VQA accuracy as the VQAv2 evaluation script (``vqaEval.py``, Antol et al. / Goyal et al.).

An answer is normalised (newlines/tabs to spaces; punctuation stripped or turned into spaces
by the official rules; periods not part of a number removed; lowercased; number words "none",
"zero" .. "ten" to digits; articles a/an/the dropped; contractions restored to their
apostrophe form), then scored against the human answers with the leave-one-out average

    acc = mean over annotators i of  min(1, #{j != i : answer_j == prediction} / 3)

which, with 10 annotators, is 1.0 when 4+ agree with the prediction, 0.9 when 3 do, 0.3 for 1.
Fewer annotators use the same formula over their leave-one-out subsets; a single annotator
(the formula would always give 0) is scored by exact match of the normalised answers.

Where the official script differs from what we do by default: it normalises the human answers
only by the punctuation step, and only when they disagree (its annotation files are already
clean); we apply the full normalisation to both sides, so raw answers like "Two" match "2".
``official_gt_processing=True`` restores the official behaviour.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!")
# Verbatim from vqaEval.py, including its "(?!<=" (a lookahead, not the lookbehind it meant):
# every period not followed by a digit is removed.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def _clean_whitespace(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
  out = text
  for p in _PUNCT:
    if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
  words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  words = [w for w in words if w not in _ARTICLES]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
  """The VQAv2 answer normalisation, e.g. "Two" -> "2", "a dog." -> "dog"."""
  return _process_digit_article(_process_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str], official_gt_processing: bool = False
                 ) -> float:
  """VQAv2 accuracy of one predicted answer against the human answers (usually 10).

  Args:
    prediction: the model's answer.
    answers: the annotators' answers, at least one.
    official_gt_processing: normalise the human answers exactly as vqaEval.py does (only
      punctuation, only when they disagree) instead of fully.

  Returns:
    Accuracy in [0, 1].
  """
  if isinstance(answers, str) or not answers:
    raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}.")
  pred = normalize_answer(prediction)
  if official_gt_processing:
    gts = [_clean_whitespace(a) for a in answers]
    if len(set(gts)) > 1:
      gts = [_process_punctuation(a) for a in gts]
  else:
    gts = [normalize_answer(a) for a in answers]
  if len(gts) == 1:
    return float(gts[0] == pred)
  matches = sum(a == pred for a in gts)
  # Leaving out annotator i removes one match iff annotator i agreed with the prediction.
  per_subset = [min(1.0, (matches - (a == pred)) / 3.0) for a in gts]
  return sum(per_subset) / len(per_subset)


def mean_vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                      official_gt_processing: bool = False) -> float:
  """Mean ``vqa_accuracy`` over questions, in [0, 1] (VQAv2 reports 100x this)."""
  if isinstance(predictions, str) or len(predictions) != len(answers) or not predictions:
    raise ValueError(f"need one answer list per prediction and at least one prediction, got "
                     f"{len(predictions)} predictions and {len(answers)} answer lists.")
  return sum(vqa_accuracy(p, a, official_gt_processing)
             for p, a in zip(predictions, answers)) / len(predictions)


def accuracy_by_question(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                         questions: Sequence[str]) -> dict[str, float]:
  """Mean ``vqa_accuracy`` per distinct question, in order of first appearance (VQAv2's
  per-answer-type breakdown, for data whose questions come from a few templates)."""
  if not len(predictions) == len(answers) == len(questions):
    raise ValueError(f"need one answer list and one question per prediction, got "
                     f"{len(predictions)} predictions, {len(answers)} answer lists and "
                     f"{len(questions)} questions.")
  scores: dict[str, list[float]] = {}
  for p, a, q in zip(predictions, answers, questions):
    scores.setdefault(q, []).append(vqa_accuracy(p, a))
  return {q: sum(v) / len(v) for q, v in scores.items()}
