"""``bench data``: batches/s of the digits input pipeline."""
from __future__ import annotations

import statistics
import time

from absl import flags

from experiments.benchmarks.common import machine

FLAGS = flags.FLAGS


def bench_data():
  """Batches/s of the digits input pipeline (batch 64, 16x16 images, 32 text ids; the
  tokenizer trained as a run trains it): best of ``--repeats`` passes of 200 batches."""
  from data import digits, pipeline, tokenizer as tokenizer_lib
  tok = tokenizer_lib.Tokenizer.train(digits.text_corpus(), None, 256)
  it = pipeline.make_dataset("digits", split="train", batch_size=64, image_size=16, channels=1,
                             max_text_len=32, tokenizer=tok, seed=0)
  next(it)
  rates = []
  for _ in range(FLAGS.repeats):
    t = time.perf_counter()
    for _ in range(200):
      next(it)
    rates.append(200 / (time.perf_counter() - t))
  print(f"digits pipeline, batch 64 (16x16, 32 text ids): {max(rates):.0f} batches/s best, "
        f"{statistics.median(rates):.0f} median of {FLAGS.repeats}; {machine()}")
