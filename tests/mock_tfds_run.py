"""Runs ``python -m MODULE ARGS...`` under ``tfds.testing.mock_data``: every tfds dataset then
yields random examples made from its builder's own features (any split name), so a named config
trains on "ImageNet" or "MNIST" without the data. For the subprocess tests of the named configs:

  python tests/mock_tfds_run.py NUM_EXAMPLES MODULE ARGS...
"""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  num_examples, module, *args = sys.argv[1:]
  sys.argv = [module, *args]
  with tfds.testing.mock_data(num_examples=int(num_examples),
                              policy=tfds.testing.MockPolicy.USE_CODE):
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
