r"""Sample from a trained workdir, for any task (the file formats are described below).

  python -m experiments.sample --workdir=DIR --task=class --num=40 --out=samples.npz
  python -m experiments.sample --workdir=DIR --task=t2i --prompt="seven, a handwritten digit" \
      --num=8 --out=t2i.npz --cfg=2
  python -m experiments.sample --workdir=DIR --task=caption --num=20 --out=captions.jsonl
  python -m experiments.sample --workdir=DIR --task=vqa --num=20 --out=vqa.jsonl
  python -m experiments.sample --workdir=DIR --task=joint --num=16 --out=joint   # .npz + .jsonl
  python -m experiments.sample --workdir=DIR --task=text --num=16 --out=text.jsonl
  python -m experiments.sample --workdir=DIR --task=inpaint --num=10 --out=inpaint.npz

Image outputs are ``.npz`` (``images`` uint8 NHWC, plus ``labels`` / ``prompts``) and a PNG grid
beside them; text outputs ``.jsonl`` (``index``, ``label``, ``question``, ``reference``,
``text``). Captioning, VQA and inpainting use the held-out split's images and questions
(``data.pipeline.heldout_split``). ``--out`` may be local or any ``etils.epath`` path (gs://).

Under several processes (a TPU pod, or as ``experiments.distributed`` describes) every process
samples and process 0 writes the outputs.
"""
from __future__ import annotations

import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import distributed, sample_io
from experiments.workdir import open_run, sampler_overrides, vqa_prompts

FLAGS = flags.FLAGS
TASK_NAMES = {"class": "class2img", "t2i": "t2i", "caption": "caption", "vqa": "vqa",
              "joint": "joint", "text": "text", "inpaint": "inpaint"}
flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
flags.DEFINE_enum("task", "class", list(TASK_NAMES), "What to generate.")
flags.DEFINE_integer("num", 16, "How many samples.")
flags.DEFINE_string("out", None, "Output file (.npz / .jsonl; joint: a stem).", required=True)
flags.DEFINE_integer("steps", None, "Sampler steps (default: the config's).")
flags.DEFINE_float("cfg", None, "Guidance weight w (default: the config's).")
flags.DEFINE_float("temperature", None, "Text temperature: 1 samples the model's tokens, 0 takes "
                   "the most likely (greedy; default: the config's).")
flags.DEFINE_string("prompt", None, "Caption for t2i (default: held-out captions).")
flags.DEFINE_integer("label", None, "Class for class/inpaint (default: cycle through classes).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")


def _stem(path):
  return os.path.splitext(path)[0]


def main(argv):
  del argv
  from data import pipeline
  distributed.maybe_initialize("auto")
  overrides = sampler_overrides(FLAGS.steps, FLAGS.cfg, FLAGS.temperature)
  run = open_run(FLAGS.workdir, overrides)
  task, num, tok = TASK_NAMES[FLAGS.task], FLAGS.num, run.tokenizer
  mc, dc = run.trainer.model_cfg, run.config.data
  rng = jax.random.PRNGKey(FLAGS.seed)
  if tok is None and task not in ("class2img", "inpaint"):
    raise app.UsageError(f"--task={FLAGS.task} needs text, but this run's data ({dc.name}) has "
                         "none (it trained class-to-image only, without a tokenizer); use "
                         "--task=class or --task=inpaint.")
  heldout = []
  if task in ("caption", "vqa", "inpaint", "t2i"):
    heldout = pipeline.eval_examples(dc.name, split=pipeline.heldout_split(dc.name), num=num,
                                     image_size=dc.image_size, channels=dc.channels,
                                     data_dir=dc.data_dir)
    if len(heldout) < num:
      raise ValueError(f"--num={num} but the held-out split has {len(heldout)} examples")
  labels = (np.full(num, FLAGS.label) if FLAGS.label is not None
            else np.arange(num) % mc.num_classes)
  given, rows, prompts = {}, [], None
  if task in ("class2img", "inpaint"):
    given["labels"] = jnp.asarray(labels)
  if task in ("caption", "vqa", "inpaint"):
    given["images"] = jnp.asarray(np.stack([e["image"] for e in heldout]))
  if task == "inpaint":   # keep the top half, generate the bottom half
    mask = np.zeros(given["images"].shape, bool)
    mask[:, : mc.image_size // 2] = True
    given["image_mask"] = jnp.asarray(mask)
  if task == "t2i":
    prompts = [FLAGS.prompt] * num if FLAGS.prompt else [e["captions"][0] for e in heldout]
    given["text"] = jnp.asarray(np.stack([tok.encode_padded(p, mc.max_text_len)[0]
                                          for p in prompts]))
  if task == "vqa":
    seqs, plens = vqa_prompts(tok, heldout, mc.max_text_len)
    given["text"], given["prompt_len"] = jnp.asarray(seqs), jnp.asarray(plens)
  images, tokens = run.trainer.sample(run.state, task, rng, num, **given)
  if jax.process_index() != 0:
    return

  if task in ("class2img", "t2i", "inpaint", "joint"):
    path = _stem(FLAGS.out) + ".npz"
    sample_io.save_npz(path, images, labels=labels if task != "t2i" else None, prompts=prompts)
    sample_io.save_grid(images, _stem(FLAGS.out) + ".png", upscale=4)
    print(f"wrote {path} and {_stem(FLAGS.out)}.png")
  if task in ("caption", "vqa", "joint", "text"):
    for i in range(num):
      row = {"index": i, "label": int(heldout[i]["label"]) if heldout else None}
      if task == "vqa":
        plen = int(given["prompt_len"][i])
        row.update(question=heldout[i]["question"], reference=heldout[i]["answer"],
                   text=tok.decode(tokens[i][plen:]))
      else:
        row["text"] = tok.decode(tokens[i])
        if task == "caption":
          row["reference"] = heldout[i]["captions"][0]
      rows.append(row)
    path = _stem(FLAGS.out) + ".jsonl"
    sample_io.save_jsonl(path, rows)
    print(f"wrote {path}")
    for row in rows[:8]:
      print(" ", row)


if __name__ == "__main__":
  app.run(main)
