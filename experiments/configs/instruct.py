"""InstructMDM-style multi-task run: captioning, VQA and text (plus joint), on a captioned
folder or tfds dataset with question/answer pairs. Defaults to MNIST-scale data (which has
templated VQA); point `--config.data.name/data_dir` at yours."""
from experiments.configs import mnist


def get_config():
  c = mnist.get_config()
  c.loss.task_weights = (0.0, 0.0, 1.0, 1.0, 0.5, 1.0)
  c.data.max_text_len = 32
  return c
