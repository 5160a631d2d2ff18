"""Captioning metrics as the COCO caption evaluation computes them: BLEU-4 and CIDEr-D.

Hand-written rather than depending on ``pycocoevalcap``: that package needs Java (its PTB
tokenizer, METEOR, SPICE) and Python-2-era code, and both metrics are a few dozen lines.

* ``tokenize_caption``: lowercase, punctuation removed, whitespace split. This stands in for
  coco-caption's Stanford PTB tokenizer + punctuation filter; it differs only on clitics (PTB
  splits "dog's" into "dog 's", this gives "dog s").
* ``corpus_bleu``: Papineni et al. (2002) corpus BLEU: clipped n-gram counts summed over the
  corpus, geometric mean of the n = 1..max_n precisions, brevity penalty ``exp(1 - r / c)``
  with r the sum of each candidate's closest reference length (ties to the shorter, as
  coco-caption's ``option='closest'``). No smoothing: a zero precision gives 0 (coco-caption
  adds 1e-15 / 1e-9 to each ratio, so it reports ~1e-8 instead of 0 there).
* ``cider_d``: Vedantam et al. (2015) CIDEr-D as coco-caption's ``CiderScorer``/``CiderD``:
  tf-idf vectors per n-gram order n = 1..4 with document frequency over the images' reference
  sets, ``idf = log(num_images) - log(max(1, df))``; candidate counts clipped to reference
  counts; Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``, sigma = 6; the mean over n
  of the penalised cosine similarities, averaged over references, times 10. (coco-caption
  measures length in bigrams, which gives the same delta as words for n >= 2.)
"""
from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence

import numpy as np

_PUNCTUATION = re.compile("[" + re.escape(string.punctuation) + "]")


def tokenize_caption(text: str) -> list[str]:
  """Lowercases, replaces punctuation with spaces and splits on whitespace."""
  return _PUNCTUATION.sub(" ", text.lower()).split()


def _ngram_counts(tokens: Sequence[str], max_n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + k]) for k in range(1, max_n + 1)
                             for i in range(len(tokens) - k + 1))


def _prepare(candidates: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool
             ) -> tuple[list[list[str]], list[list[list[str]]]]:
  if isinstance(candidates, str) or isinstance(references, str):
    raise ValueError("pass a list of candidate strings and a list of reference lists.")
  if len(candidates) != len(references) or not candidates:
    raise ValueError(f"need one reference list per candidate and at least one candidate, got "
                     f"{len(candidates)} candidates and {len(references)} reference lists.")
  split = tokenize_caption if tokenize else str.split
  cands = [split(c) for c in candidates]
  refs = []
  for i, ref_list in enumerate(references):
    if isinstance(ref_list, str) or not ref_list:
      raise ValueError(f"references[{i}] must be a non-empty list of strings, got {ref_list!r}.")
    refs.append([split(r) for r in ref_list])
  return cands, refs


def corpus_bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
                tokenize: bool = True) -> float:
  """Corpus-level BLEU-max_n (BLEU-4 by default), multiple references per candidate.

  Args:
    candidates: one generated caption per image.
    references: a list of reference captions per image.
    max_n: highest n-gram order (uniform weights 1 / max_n).
    tokenize: apply ``tokenize_caption``; False splits on whitespace only.

  Returns:
    BLEU in [0, 1].
  """
  cands, refs = _prepare(candidates, references, tokenize)
  matches = np.zeros(max_n)
  totals = np.zeros(max_n)
  cand_len = ref_len = 0
  for cand, ref_list in zip(cands, refs):
    cand_counts = _ngram_counts(cand, max_n)
    max_ref_counts = collections.Counter()
    for ref in ref_list:
      max_ref_counts |= _ngram_counts(ref, max_n)  # | keeps the max count per n-gram.
    for ngram, count in cand_counts.items():
      matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
      totals[len(ngram) - 1] += count
    cand_len += len(cand)
    ref_len += min((len(r) for r in ref_list), key=lambda l: (abs(l - len(cand)), l))
  if np.any(matches == 0):
    return 0.0
  log_precision = np.mean(np.log(matches / totals))
  brevity = 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)
  return float(brevity * math.exp(log_precision))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0, tokenize: bool = True) -> tuple[float, np.ndarray]:
  """CIDEr-D of each candidate against its references; idf from this corpus's references.

  Args:
    candidates: one generated caption per image.
    references: a list of reference captions per image (the document-frequency corpus).
    n: highest n-gram order.
    sigma: width of the Gaussian length penalty.
    tokenize: apply ``tokenize_caption``; False splits on whitespace only.

  Returns:
    (corpus score = mean over images, per-image scores (num_images,)). A candidate equal to
    all its references scores 10 when its n-grams (up to n) occur in no other image's
    references; with a single image every idf is 0 and so is the score.
  """
  cands, refs = _prepare(candidates, references, tokenize)
  ref_counts = [[_ngram_counts(r, n) for r in ref_list] for ref_list in refs]
  doc_freq = collections.Counter()
  for counts_list in ref_counts:
    doc_freq.update(set().union(*counts_list))
  log_num_docs = math.log(len(refs))

  def tfidf(counts):
    vec = [{} for _ in range(n)]
    for ngram, tf in counts.items():
      vec[len(ngram) - 1][ngram] = tf * (log_num_docs - math.log(max(1.0, doc_freq[ngram])))
    norms = [math.sqrt(sum(v * v for v in order.values())) for order in vec]
    return vec, norms

  scores = np.zeros(len(cands))
  for i, (cand, ref_list, counts_list) in enumerate(zip(cands, refs, ref_counts)):
    vec, norms = tfidf(_ngram_counts(cand, n))
    total = 0.0
    for ref, counts in zip(ref_list, counts_list):
      ref_vec, ref_norms = tfidf(counts)
      penalty = math.exp(-((len(cand) - len(ref)) ** 2) / (2.0 * sigma ** 2))
      for k in range(n):
        dot = sum(min(v, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0)
                  for g, v in vec[k].items())
        if norms[k] and ref_norms[k]:
          dot /= norms[k] * ref_norms[k]
        total += penalty * dot / n
    scores[i] = 10.0 * total / len(ref_list)
  return float(scores.mean()), scores
