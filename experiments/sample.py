r"""Sample from a trained workdir (or an export), for any task and any number of samples.

  python -m experiments.sample --workdir=DIR --task=class --num=40 --out=samples.npz
  python -m experiments.sample --workdir=DIR --task=class --num=50000 --batch_size=250 \
      --format=adm --out=/data/fid50k.npz          # ADM's evaluator reads it as is
  python -m experiments.sample --workdir=DIR --task=t2i --prompt="seven, a handwritten digit" \
      --num=8 --out=t2i.npz --cfg=2
  python -m experiments.sample --workdir=DIR --task=caption --num=20 --out=captions.jsonl
  python -m experiments.sample --workdir=DIR --task=vqa --num=20 --out=vqa.jsonl
  python -m experiments.sample --workdir=DIR --task=joint --num=16 --out=joint   # .npz + .jsonl
  python -m experiments.sample --workdir=DIR --task=text --num=16 --out=text.jsonl
  python -m experiments.sample --workdir=DIR --task=inpaint --num=10 --mask=left \
      --out=inpaint.npz            # keeps the left half of each held-out image, redraws the rest
  python -m experiments.sample --workdir=DIR --task=infill --prompt="[MASK] written by hand" \
      --num=8 --out=infill.jsonl   # each [MASK] becomes one generated token, the rest is kept

A clip model's workdir (e.g. ``--config=video_tiny``) takes the same tasks on clips, also
spelt ``class2video``, ``t2v``, ``video_caption``, ``video_vqa`` and ``video_joint``, plus
``predict`` (the first half of each held-out clip's frames kept, the rest generated) and
``interpolate`` (the first and last frames kept); its .npz holds ``videos`` uint8
(N, T, H, W, C) and its grid is an animated GIF:

  python -m experiments.sample --workdir=DIR --task=class2video --num=8 --out=class2video.npz
  python -m experiments.sample --workdir=DIR --task=predict --num=8 --out=predict.npz

VQA answers are greedy (temperature 0, as VQA benchmarks decode) unless ``--temperature`` is
given; the other text tasks sample at ``--temperature`` or the config's.

Inpainting: ``--mask`` names the region KEPT from the held-out image (``top``, ``bottom``,
``left``, ``right``: that half; ``center``: the central half-size square), everything else is
generated; or a ``.npy`` / ``.png`` file of the image's height x width, True / nonzero where
the image is kept.

The samples are generated in batches of ``--batch_size`` (one compilation), with a progress line
(samples/s, ETA). Each finished batch is written at once to ``<out stem>.shards/`` (one
``batch_NNNNNN.npz`` each, atomically, beside a ``meta.json`` of the flags that made them); a
killed run started again with the same flags skips the finished batches and produces the same
samples as an uninterrupted one. The shards are merged into the output at the end (delete the
folder to start over).

Outputs: ``--format=npz``: images as ``.npz`` (``images`` uint8 NHWC, plus ``labels`` /
``prompts``) and a PNG grid (of the first 256) beside it; text as ``.jsonl`` (``index``,
``label``, ``question``, ``reference``, ``text``). ``--format=adm``: one ``.npz`` in the layout of
ADM's ``evaluations/evaluator.py`` (``arr_0`` uint8 NHWC, ``arr_1`` the class labels when there
are ones). Captioning, VQA and inpainting use the held-out split's images and questions
(``data.pipeline.heldout_split``). ``--out`` may be local or any ``etils.epath`` path (gs://).

Only the EMA parameters and latent statistics are read from the checkpoint. Each batch is one
computation over the whole mesh, its batch axis split over the devices (pass a ``--batch_size``
that is a multiple of the device count). Under several processes (a TPU pod, or as
``experiments.distributed`` describes) every process runs each batch, computing its devices'
share of it; process 0 decides which batches are finished and writes.
"""
from __future__ import annotations

import io
import json
import os
import signal
import time

from absl import app, flags, logging
from etils import epath
import jax
import numpy as np

from experiments import allocator
from experiments import distributed, sample_io
from experiments.workdir import open_run, sampler_overrides
from mdm_jax import api
from mdm_jax import run_io
from mdm_jax import tasks
from mdm_jax.generate import JOINT_ORDERS

FLAGS = flags.FLAGS
INFILL = "infill"   # the text task with the [MASK]s of --prompt to fill (its text_mask)
FRAME_TASKS = tasks.FRAME_TASKS
# A clip model's tasks are the image tasks on clips; these spellings name them.
VIDEO_ALIASES = {"class2video": "class2img", "t2v": "t2i", "video_caption": "caption",
                 "video_vqa": "vqa", "video_joint": "joint"}
TASK_NAMES = {**{t: t for t in tasks.GEN_TASKS}, **tasks.ALIASES, **VIDEO_ALIASES,
              INFILL: INFILL, **{t: t for t in FRAME_TASKS}}
IMAGE_TASKS = tuple(t for t, s in tasks.SPECS.items() if "image" in s.outputs) + FRAME_TASKS
TEXT_TASKS = tuple(t for t, s in tasks.SPECS.items() if "text" in s.outputs) + (INFILL,)
MASK_REGIONS = ("top", "bottom", "left", "right", "center")
GRID_MAX = 256
flags.DEFINE_string("workdir", None, "A training workdir or an export.", required=True)
flags.DEFINE_enum("task", "class", list(TASK_NAMES), "What to generate.")
flags.DEFINE_integer("num", 16, "How many samples.")
flags.DEFINE_integer("batch_size", None, "Samples per batch (default: the config's sample.num).")
flags.DEFINE_string("out", None, "Output file (.npz / .jsonl; joint: a stem).", required=True)
flags.DEFINE_enum("format", "npz", ["npz", "adm"], "Image output layout: npz (images, labels, "
                  "prompts + a PNG grid) or adm (arr_0, arr_1: ADM's evaluator).")
flags.DEFINE_integer("steps", None, "Sampler steps (default: the config's).")
flags.DEFINE_float("cfg", None, "Guidance weight w on the class (default: the config's).")
flags.DEFINE_float("caption_cfg", None, "Guidance weight w on the caption, for t2i and joint "
                   "(default: the config's sample.caption_guidance).")
flags.DEFINE_enum("joint_order", None, list(JOINT_ORDERS), "How joint samples are drawn "
                  "(default: the config's sample.joint_order).")
flags.DEFINE_float("temperature", None, "Text temperature: 1 samples the model's tokens, 0 takes "
                   "the most likely (greedy; default: 0 for vqa, the config's otherwise).")
flags.DEFINE_string("prompt", None, "Caption for t2i (default: held-out captions); for "
                    "infill, the text whose [MASK]s are filled (required).")
flags.DEFINE_string("mask", "top", "inpaint: the region KEPT from each image, one of "
                    f"{'|'.join(MASK_REGIONS)}, or a .npy/.png file (H, W), True/nonzero where "
                    "kept; the rest is generated.")
flags.DEFINE_integer("label", None, "Class for class/inpaint (default: cycle through classes).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("kill_after_batches", None, "Testing: SIGKILL this process after writing "
                     "this many batches (to test resuming).")


def vqa_temperature(flag: float | None) -> float:
  """The VQA answers' text temperature: greedy (0) unless ``--temperature`` is given."""
  return 0.0 if flag is None else float(flag)


def inpaint_mask(spec: str, shape: tuple[int, int]) -> np.ndarray:
  """bool (H, W), True where the image is KEPT: a region name (``MASK_REGIONS``: ``top`` keeps
  the top half, ``center`` the central (H/2, W/2) square) or a .npy / .png file."""
  h, w = shape
  m = np.zeros((h, w), bool)
  if spec in MASK_REGIONS:
    region = {"top": np.s_[:h // 2], "bottom": np.s_[h // 2:], "left": np.s_[:, :w // 2],
              "right": np.s_[:, w // 2:],
              "center": np.s_[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2]}[spec]
    m[region] = True
    return m
  path = epath.Path(spec)
  if path.suffix.lower() not in (".npy", ".png") or not path.exists():
    raise app.UsageError(f"--mask={spec}: give one of {', '.join(MASK_REGIONS)} or an existing "
                         ".npy / .png file of the image size, True / nonzero where kept")
  if path.suffix.lower() == ".npy":
    with path.open("rb") as f:
      m = np.load(f, allow_pickle=False)
  else:
    from PIL import Image
    with path.open("rb") as f:
      m = np.asarray(Image.open(f).convert("L"))
  if m.shape != (h, w):
    raise app.UsageError(f"--mask={spec} is {m.shape}, the images are {(h, w)}: give an "
                         "(H, W) mask")
  return m.astype(bool)


def frame_mask(task: str, frames: int) -> np.ndarray:
  """``tasks.frame_mask``; an image run's refusal names the image task to use instead."""
  try:
    return tasks.frame_mask(task, frames)
  except ValueError as e:
    raise app.UsageError(f"--task={task}: {e}; use --task=inpaint") from None


def _stem(path):
  return os.path.splitext(os.fspath(path))[0]


def spec(task: str) -> tasks.Task:
  """The task table's row for a task name of this CLI (infill is the text task)."""
  return tasks.SPECS["text" if task == INFILL else "inpaint" if task in FRAME_TASKS else task]


def outputs(task: str, out: str) -> tuple[str, ...]:
  """The files ``--out`` names for ``task`` (beside them, images get a ``.png`` grid): a stem
  gets the task's suffix (image tasks: .npz; text tasks: .jsonl; joint: both files); a
  UsageError when its suffix does not fit the task (e.g. ``c.txt`` for images)."""
  stem, suffix = os.path.splitext(os.fspath(out))
  want = tuple(s for s, kinds in ((".npz", IMAGE_TASKS), (".jsonl", TEXT_TASKS))
               if task in kinds)
  if len(want) == 1 and suffix.lower() == want[0]:
    return (os.fspath(out),)
  if len(want) == 1 and not suffix:
    return (stem + want[0],)
  if len(want) > 1 and suffix.lower() in ("", *want):
    return tuple(stem + s for s in want)
  if len(want) > 1:
    fix = f"--out={stem} (writes {stem}.npz and {stem}.jsonl)"
  else:
    fix = f"--out={stem}{want[0]}"
  raise app.UsageError(f"--out={out}: --task={FLAGS.task} writes "
                       f"{' and '.join(want)} files; pass {fix}")


def check_flags(task: str) -> None:
  """What can be checked before anything is loaded or compiled."""
  outputs(task, FLAGS.out)
  if FLAGS.num < 1:
    raise app.UsageError(f"--num={FLAGS.num}: ask for at least one sample")
  if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
    raise app.UsageError(f"--batch_size={FLAGS.batch_size} must be >= 1")
  if FLAGS.steps is not None and FLAGS.steps < 1:
    raise app.UsageError(f"--steps={FLAGS.steps} must be >= 1")
  if FLAGS.format == "adm" and task not in IMAGE_TASKS:
    raise app.UsageError(f"--format=adm writes images; --task={FLAGS.task} makes text")
  if FLAGS.label is not None and not spec(task).uses_class:
    raise app.UsageError(f"--label is for --task=class or inpaint, not {FLAGS.task}")
  if FLAGS.prompt is not None and not (spec(task).text == tasks.CLEAN or task == INFILL):
    raise app.UsageError(f"--prompt is for --task=t2i or infill, not {FLAGS.task}")
  if task == INFILL and (FLAGS.prompt is None or api.MASK_WORD not in FLAGS.prompt):
    raise app.UsageError(f"--task=infill fills the {api.MASK_WORD}s of --prompt: pass e.g. "
                         f'--prompt="{api.MASK_WORD} written by hand"')
  if FLAGS.prompt is not None and not FLAGS.prompt.strip():
    raise app.UsageError("--prompt is empty: give a caption, or leave it out to use the "
                         "held-out captions")
  if FLAGS.kill_after_batches is not None and FLAGS.kill_after_batches < 1:
    raise app.UsageError("--kill_after_batches must be >= 1")


class Shards:
  """The finished batches of one sampling run: ``<dir>/batch_NNNNNN.npz`` and ``meta.json``."""

  def __init__(self, directory, meta: dict):
    self.dir = epath.Path(directory)
    self.meta = meta

  def open(self) -> None:
    """Creates the folder, or checks that its shards were made with the same flags."""
    meta_path = self.dir / "meta.json"
    if meta_path.exists():
      saved = json.loads(meta_path.read_text())
      diff = {k: (saved.get(k), v) for k, v in self.meta.items() if saved.get(k) != v}
      if diff:
        shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise app.UsageError(f"{self.dir} holds batches of a different sampling run ({shown}): "
                             "pass the same flags to resume it, or delete the folder (or choose "
                             "another --out) to start over")
    else:
      self.dir.mkdir(parents=True, exist_ok=True)
      meta_path.write_text(json.dumps(self.meta, indent=1))

  def path(self, b: int) -> epath.Path:
    return self.dir / f"batch_{b:06d}.npz"

  def done(self, num_batches: int) -> np.ndarray:
    return np.asarray([self.path(b).exists() for b in range(num_batches)])

  def write(self, b: int, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = self.dir / f".batch_{b:06d}.npz.tmp-{os.getpid()}"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(self.path(b))       # a killed write never leaves a batch that looks finished

  def read(self, b: int) -> dict:
    with np.load(io.BytesIO(self.path(b).read_bytes()), allow_pickle=False) as f:
      return {k: f[k] for k in f.files}


def _heldout(run, task, num):
  from data import pipeline
  dc = run.config.data
  given_text = spec(task).text == tasks.CLEAN and not FLAGS.prompt   # t2i: held-out captions
  if "images" not in spec(task).needs and not given_text:
    return []
  heldout = pipeline.eval_examples(dc.name, split=pipeline.heldout_split(dc.name), num=num,
                                   image_size=dc.image_size, channels=dc.channels,
                                   data_dir=dc.data_dir, frames=run.config.model.frames)
  if len(heldout) < num:
    raise app.UsageError(f"--num={num}: --task={FLAGS.task} reads one held-out example per "
                         f"sample, and the held-out split has {len(heldout)}")
  return heldout


def sample_batch(pipe, task, idx, keep, *, first_index, labels, heldout, prompts, mask=None):
  """One batch (the samples ``idx``, of which the first ``keep`` are kept): its shard arrays
  (images uint8, labels, rows as JSON)."""
  kw = dict(seed=FLAGS.seed, first_index=first_index)
  ex = [heldout[i] for i in idx] if heldout else []
  images, texts, rows = None, None, []
  if task == "class2img":
    images = pipe.class_to_image(labels[idx], **kw)
  elif task == "t2i":
    images = pipe.text_to_image([prompts[i] for i in idx], **kw)
  elif task in ("inpaint", *FRAME_TASKS):   # keep where mask is True, generate the rest
    images = pipe.inpaint(np.stack([e["image"] for e in ex]), mask, labels=labels[idx], **kw)
  elif task == INFILL:
    texts = pipe.infill([prompts[i] for i in idx], **kw)
  elif task == "joint":
    images, texts = pipe.joint(len(idx), **kw)
  elif task == "text":
    texts = pipe.text(len(idx), **kw)
  elif task == "caption":
    texts = pipe.caption(np.stack([e["image"] for e in ex]), **kw)
  elif task == "vqa":
    texts = pipe.vqa(np.stack([e["image"] for e in ex]), [e["question"] for e in ex],
                     temperature=vqa_temperature(FLAGS.temperature), **kw)
  if texts is not None:
    for j, i in enumerate(idx[:keep]):
      row = {"index": int(i), "label": int(ex[j]["label"]) if ex else None}
      if task == "vqa":
        row.update(question=ex[j]["question"], reference=ex[j]["answer"])
      row["text"] = texts[j]
      if task == "caption":
        row["reference"] = ex[j]["captions"][0]
      if task == INFILL:
        row["prompt"] = prompts[i]
      rows.append(row)
  arrays = {"rows": np.asarray(json.dumps(rows))}
  if images is not None:
    arrays["images"] = images[:keep]
  if spec(task).uses_class:
    arrays["labels"] = labels[idx[:keep]]
  return arrays


def check_adm(workdir) -> None:
  """--format=adm writes ADM's image batch: refused for a clip model, from its saved config
  alone (nothing restored or compiled)."""
  frames = run_io.saved_config(workdir).model.frames
  if frames > 1:
    raise app.UsageError(
        f"--format=adm writes ADM's image batch (arr_0 uint8 (N, H, W, C)), but {workdir} is a "
        f"clip model's run (model.frames={frames}): its samples are videos. Pass --format=npz "
        "(videos uint8 (N, T, H, W, C) and an animated GIF grid)")


def main(argv):
  del argv
  task = TASK_NAMES[FLAGS.task]
  check_flags(task)
  if FLAGS.format == "adm":
    check_adm(FLAGS.workdir)
  distributed.maybe_initialize("auto")
  lock = sample_io.OutputLock(_stem(FLAGS.out) + ".lock")
  if jax.process_index() == 0:   # the one writer
    try:
      lock.acquire()
    except sample_io.OutputLockedError as e:
      raise app.UsageError(str(e)) from None
  try:
    _sample(task)
  finally:
    lock.release()


def _sample(task: str) -> None:
  """Generates the samples in batches (resuming finished ones), then merges them."""
  run = open_run(FLAGS.workdir, sampler_overrides(FLAGS.steps, FLAGS.cfg, FLAGS.temperature,
                                                  FLAGS.caption_cfg, FLAGS.joint_order))
  pipe = api.Pipeline(run, batch_size=FLAGS.batch_size)
  num, bs = FLAGS.num, min(pipe.batch_size, FLAGS.num)
  if bs % jax.device_count():
    logging.warning("--batch_size=%d is not a multiple of the %d devices: each batch is then "
                    "not split over them (the model's batch axis is sharded only when it "
                    "divides); pass a multiple for full speed", bs, jax.device_count())
  if pipe.tokenizer is None and spec(task).text != tasks.ABSENT:
    raise app.UsageError(f"--task={FLAGS.task} needs text, but this run's data "
                         f"({run.config.data.name}) has none (it trained class-to-image only, "
                         "without a tokenizer); use --task=class or --task=inpaint.")
  try:
    labels = (pipe.check_labels(np.full(num, FLAGS.label)) if FLAGS.label is not None
              else np.arange(num, dtype=np.int32) % pipe.num_classes)
  except ValueError as e:
    raise app.UsageError(f"--label={FLAGS.label}: {e}") from None
  heldout = _heldout(run, task, num)
  prompts, mask = None, None
  if task == INFILL:
    prompts = [FLAGS.prompt] * num
  if task == "inpaint":
    mask = inpaint_mask(FLAGS.mask, pipe.image_shape[-3:-1])
  if task in FRAME_TASKS:
    mask = frame_mask(task, run.config.model.frames)
  if task == "t2i":
    prompts = [FLAGS.prompt] * num if FLAGS.prompt else [e["captions"][0] for e in heldout]
    api.encode_prompts(pipe.tokenizer, [FLAGS.prompt] if FLAGS.prompt else prompts,
                       pipe.max_text_len)   # warns now, before anything compiles

  meta = dict(task=task, num=num, batch_size=bs, seed=FLAGS.seed, checkpoint_step=run.step,
              workdir=os.fspath(FLAGS.workdir), label=FLAGS.label, prompt=FLAGS.prompt,
              steps=run.trainer.sample_cfg.steps, guidance=run.trainer.sample_cfg.guidance,
              caption_guidance=run.trainer.sample_cfg.caption_guidance,
              joint_order=run.trainer.sample_cfg.joint_order if task == "joint" else None,
              temperature=(vqa_temperature(FLAGS.temperature) if task == "vqa"
                           else run.trainer.sample_cfg.text_temperature),
              mask=FLAGS.mask if task == "inpaint" else None)
  shards = Shards(_stem(FLAGS.out) + ".shards", meta)
  is_main = jax.process_index() == 0
  if is_main:
    shards.open()
  num_batches = -(-num // bs)
  done = shards.done(num_batches) if is_main else np.zeros(num_batches, bool)
  if jax.process_count() > 1:   # every process runs the same batches (global computations)
    from jax.experimental import multihost_utils
    done = np.asarray(multihost_utils.broadcast_one_to_all(done))
  todo = [b for b in range(num_batches) if not done[b]]
  if done.any():
    print(f"resuming: {int(done.sum())} of {num_batches} batches already in {shards.dir}; "
          f"generating {len(todo)}", flush=True)
  t0, written = time.time(), 0
  for k, b in enumerate(todo):
    start = b * bs
    idx = np.arange(start, start + bs) % num      # the last batch wraps: one batch shape
    keep = min(bs, num - start)
    arrays = sample_batch(pipe, task, idx, keep, first_index=start, labels=labels,
                          heldout=heldout, prompts=prompts, mask=mask)
    if is_main:
      shards.write(b, arrays)
    written += 1
    rate = sum(min(bs, num - t * bs) for t in todo[:k + 1]) / (time.time() - t0)
    left = sum(min(bs, num - t * bs) for t in todo[k + 1:])
    print(f"batch {b + 1}/{num_batches} | {int(done.sum()) + k + 1}/{num_batches} batches done "
          f"| {rate:.2f} samples/s | ETA {left / rate:.0f}s", flush=True)
    if FLAGS.kill_after_batches and written >= FLAGS.kill_after_batches:
      os.kill(os.getpid(), signal.SIGKILL)
  if not is_main:
    return
  merge(shards, task, num_batches, num, prompts)


def merge(shards: Shards, task: str, num_batches: int, num: int, prompts) -> None:
  """The shards, in order, into the output files (the images held once in memory)."""
  stem, images, labels, rows, at = _stem(FLAGS.out), None, None, [], 0
  for b in range(num_batches):
    part = shards.read(b)
    if "images" in part:
      if images is None:
        images = np.empty((num, *part["images"].shape[1:]), np.uint8)
      images[at:at + len(part["images"])] = part["images"]
    if "labels" in part:
      labels = np.empty(num, part["labels"].dtype) if labels is None else labels
      labels[at:at + len(part["labels"])] = part["labels"]
    rows += json.loads(str(part["rows"]))
    at += len(part["images"]) if "images" in part else len(json.loads(str(part["rows"])))
  if task in IMAGE_TASKS:
    path = outputs(task, FLAGS.out)[0]
    if FLAGS.format == "adm":
      with epath.Path(path).open("wb") as f:
        np.savez(f, arr_0=images, **({"arr_1": labels} if labels is not None else {}))
    else:
      sample_io.save_npz(path, images, labels=labels, prompts=prompts)
    grid = sample_io.save_visual_grid(images[:GRID_MAX], stem, upscale=4)   # clips: a GIF
    print(f"wrote {path} ({len(images)} {'videos' if images.ndim == 5 else 'images'}) and "
          f"{grid}")
  if task in TEXT_TASKS:
    path = outputs(task, FLAGS.out)[-1]
    sample_io.save_jsonl(path, rows)
    print(f"wrote {path}")
    for row in rows[:8]:
      print(" ", row)


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()  # XLA:CPU's steps, up to a third faster
  app.run(main)
