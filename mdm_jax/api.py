"""Generation from a trained run without a CLI: ``mdm_jax.load(path)`` and one method per task.

  import mdm_jax
  run = mdm_jax.load("/tmp/mdm_digits")          # a training workdir or an export
  images = run.class_to_image([3, 3, 7])         # uint8 (3, H, W, C)
  images = run.text_to_image(["seven, a handwritten digit"])
  captions = run.caption(images)                 # list[str]
  answers = run.vqa(images, ["what digit is this?"])
  images, captions = run.joint(8)
  filled = run.inpaint(images, mask)             # mask True where the image is kept
  texts = run.infill(["seven, a [MASK] digit"])  # each [MASK] is one token to generate
  pil = mdm_jax.api.to_pil(images)

Every method takes any number of inputs and generates them in batches of ``batch_size`` (one
compilation per task; a short last batch is padded), with the EMA parameters; only those (and
the latent statistics) are read from the checkpoint, never the optimizer state. ``seed`` fixes
the samples; ``first_index`` names the first sample's place in a larger run, so a run split
into several calls gives the same samples as one call (``experiments.sample`` resumes that way).

Under several processes every process must make the same calls (a global computation), and
each gets the whole result.

Opening the workdir or export (config migrations, checkpoint or safetensors, the tokenizer's
check) is ``mdm_jax.run_io``; the data stack (sentencepiece, the dataset registry) is imported
only there, when a run is loaded.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import tasks as tasks_lib

# Opening a run lives in run_io; its names stay importable from here (mdm_jax.api.open_run, ...).
from mdm_jax.run_io import (CONFIG_FILE, INFO_FILE, SAFETENSORS_FILE,  # noqa: F401
                            SAMPLING_KEYS, TOKENIZER_FILE, Run, open_run, read_safetensors,
                            sampler_overrides, upgrade_saved_config, write_safetensors)

_log = logging.getLogger(__name__)

MASK_WORD = "[MASK]"


# ----------------------------------------------------------------------------- images
def to_uint8(images) -> np.ndarray:
  """Images in [-1, 1] (any float) -> uint8 in [0, 255]."""
  x = np.asarray(images, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_pil(images) -> list:
  """uint8 (N, H, W, C) images -> PIL images (greyscale for C = 1)."""
  from PIL import Image
  x = np.asarray(images)
  return [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in x]


_warned: set = set()   # each problem text is warned about once per process


def _warn_once(key, msg, *args):
  if key not in _warned:
    _warned.add(key)
    _log.warning(msg, *args)


def encode_prompts(tokenizer, prompts: Sequence[str], max_len: int) -> np.ndarray:
  """Prompts as int32 (n, max_len) ids + eos + pad. Warns, saying what the model sees, for a
  prompt cut to ``max_len - 1`` tokens or with characters the tokenizer does not know."""
  rows = []
  for i, p in enumerate(prompts):
    if not isinstance(p, str):
      raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str")
    ids, truncated = tokenizer.encode_padded(p, max_len)
    warn_unknown(tokenizer, p, f"prompt {i}")
    if truncated:
      _warn_once(("long", p), "prompt %d has %d tokens, more than the model's max_text_len - 1 "
                 "= %d: only %r is used", i, len(tokenizer.encode(p)), max_len - 1, tokenizer.decode(ids))
    rows.append(ids)
  return np.stack(rows)


def warn_unknown(tokenizer, text: str, what: str) -> None:
  unknown = sorted({c for c in text if not c.isspace()
                    and tokenizer.unk_id in tokenizer.encode(c)})
  if unknown:
    kept = tokenizer.decode(tokenizer.encode(text))
    _warn_once(("unk", text), "%s has characters the tokenizer does not know, %s; each became "
               "<unk>: the model sees %r", what, "".join(unknown), kept)


# ----------------------------------------------------------------------------- the API
class Pipeline:
  """A loaded run and one generation method per task (see the module docstring)."""

  def __init__(self, run: Run, batch_size: int | None = None):
    self.run = run
    self.config = run.config
    self.tokenizer = run.tokenizer
    self.step = run.step
    mc = run.trainer.model_cfg
    self.num_classes = mc.num_classes
    self.class_names = run.info.get("class_names")
    self.image_shape = mc.visual_shape   # (H, W, C); a clip model's (T, H, W, C)
    self.frames = mc.frames              # 1: an image model
    self.max_text_len = mc.max_text_len
    self.batch_size = int(batch_size or run.config.sample.num)
    if self.batch_size < 1:
      raise ValueError(f"batch_size={self.batch_size} must be >= 1")

  # --- checks ---------------------------------------------------------------------------
  def _need_text(self, what):
    if self.tokenizer is None:
      raise ValueError(f"{what} needs text, but this run's data ({self.config.data.name}) has "
                       "none (it trained class-to-image only); use class_to_image or inpaint")

  def _need_clips(self, what, image_method):
    if self.frames == 1:
      raise ValueError(f"{what} generates clips, but this run's model takes images "
                       f"(model.frames=1); use {image_method}")

  def check_labels(self, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
      raise ValueError(f"labels must be a non-empty 1-D list of class ids, got shape "
                       f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
      raise TypeError(f"labels must be integers, got {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if bad.size:
      raise ValueError(f"label {int(bad[0])} is out of range: this run has {self.num_classes} "
                       f"classes, ids 0..{self.num_classes - 1}")
    return labels.astype(np.int32)

  def _images(self, images, n=None) -> np.ndarray:
    """uint8 or [-1, 1] float images (N, H, W[, C]) or PIL images -> float32 NHWC in [-1, 1]; a
    clip model's clips (N, T, H, W[, C]) -> (N, T, H, W, C)."""
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "mode"):
      images = np.stack([np.asarray(im) for im in images])
    x = np.asarray(images)
    shape = self.image_shape
    if x.ndim == len(shape) and shape[-1] == 1:
      x = x[..., None]
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape:
      raise ValueError(f"images must be (N, {', '.join(map(str, shape))}) (this model's size), "
                       f"got {x.shape}")
    if x.shape[0] == 0:
      raise ValueError("no images given")
    if n is not None and x.shape[0] != n:
      raise ValueError(f"{x.shape[0]} images for {n} inputs: give one image per input")
    if x.dtype == np.uint8:
      return x.astype(np.float32) / 127.5 - 1.0
    x = x.astype(np.float32)
    if x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3:
      raise ValueError(f"float images must be in [-1, 1], got [{x.min()}, {x.max()}]; pass "
                       "uint8 for 0..255")
    return x

  @staticmethod
  def _count(n) -> int:
    if int(n) < 1:
      raise ValueError(f"n={n} must be >= 1")
    return int(n)

  @staticmethod
  def _texts(texts, what) -> list[str]:
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    if not texts:
      raise ValueError(f"no {what} given: pass a non-empty list of strings")
    return texts

  # --- batching -------------------------------------------------------------------------
  def generate(self, task: str, n: int, *, seed: int = 0, first_index: int = 0,
               sample_cfg=None, **given):
    """``task`` for ``n`` samples in fixed-size batches: (images float (n, H, W, C) in [-1, 1],
    tokens int32 (n, T)). ``given``: numpy arrays with a leading axis of ``n``."""
    bs = min(self.batch_size, n)
    key = jax.random.PRNGKey(seed)
    images, tokens = [], []
    for start in range(0, n, bs):
      idx = np.arange(start, start + bs) % n
      chunk = {k: jnp.asarray(np.asarray(v)[idx]) for k, v in given.items()}
      rng = jax.random.fold_in(key, first_index + start)
      out_i, out_t = self.run.trainer.sample(self.run.state, task, rng, bs,
                                             sample_cfg=sample_cfg, **chunk)
      keep = min(bs, n - start)
      images.append(out_i[:keep])
      tokens.append(out_t[:keep])
    return np.concatenate(images), np.concatenate(tokens)

  # --- tasks ----------------------------------------------------------------------------
  def class_to_image(self, labels, *, seed: int = 0, first_index: int = 0) -> np.ndarray:
    """uint8 (len(labels), H, W, C), one image of each class id in ``labels``."""
    labels = self.check_labels(labels)
    images, _ = self.generate("class2img", len(labels), seed=seed, first_index=first_index,
                              labels=labels)
    return to_uint8(images)

  def text_to_image(self, prompts, *, seed: int = 0, first_index: int = 0) -> np.ndarray:
    """uint8 (len(prompts), H, W, C), one image per caption."""
    self._need_text("text_to_image")
    prompts = self._texts(prompts, "prompts")
    text = encode_prompts(self.tokenizer, prompts, self.max_text_len)
    images, _ = self.generate("t2i", len(prompts), seed=seed, first_index=first_index,
                              text=text)
    return to_uint8(images)

  def caption(self, images, *, seed: int = 0, first_index: int = 0) -> list[str]:
    """One caption per image (uint8 or [-1, 1] float (N, H, W, C), or PIL images)."""
    self._need_text("caption")
    x = self._images(images)
    _, tokens = self.generate("caption", len(x), seed=seed, first_index=first_index, images=x)
    return [self.tokenizer.decode(t) for t in tokens]

  def vqa(self, images, questions, *, temperature: float | None = 0.0, seed: int = 0,
          first_index: int = 0) -> list[str]:
    """One answer per (image, question). ``temperature`` 0 decodes greedily (as VQA benchmarks
    do); None samples at the config's ``sample.text_temperature``."""
    self._need_text("vqa")
    questions = self._texts(questions, "questions")
    x = self._images(images, n=len(questions))
    seqs, plens = [], []
    for i, q in enumerate(questions):
      ids, plen, truncated = self.tokenizer.encode_vqa(q, "", self.max_text_len)
      warn_unknown(self.tokenizer, q, f"question {i}")
      if truncated:
        _log.warning("question %d is longer than max_text_len allows: only %r is used", i,
                     self.tokenizer.decode(ids[:plen - 1]))
      seqs.append(ids)
      plens.append(plen)
    plens = np.asarray(plens, np.int32)
    sample_cfg = None
    if temperature is not None:
      sample_cfg = dataclasses.replace(self.run.trainer.sample_cfg,
                                       text_temperature=float(temperature))
    _, tokens = self.generate("vqa", len(questions), seed=seed, first_index=first_index,
                              sample_cfg=sample_cfg, images=x, text=np.stack(seqs),
                              prompt_len=plens)
    return [self.tokenizer.decode(t[p:]) for t, p in zip(tokens, plens)]

  def joint(self, n: int, *, seed: int = 0, first_index: int = 0):
    """``n`` images and their captions generated together: (uint8 (n, H, W, C), list[str])."""
    self._need_text("joint")
    images, tokens = self.generate("joint", self._count(n), seed=seed, first_index=first_index)
    return to_uint8(images), [self.tokenizer.decode(t) for t in tokens]

  def text(self, n: int, *, seed: int = 0, first_index: int = 0) -> list[str]:
    """``n`` captions generated without an image."""
    self._need_text("text")
    _, tokens = self.generate("text", self._count(n), seed=seed, first_index=first_index)
    return [self.tokenizer.decode(t) for t in tokens]

  def inpaint(self, images, mask, *, labels=None, seed: int = 0,
              first_index: int = 0) -> np.ndarray:
    """Regenerates each image where ``mask`` is False, keeping it where True.

    Args:
      images: (N, H, W, C) uint8 or [-1, 1] float, or PIL images.
      mask: bool (H, W), (N, H, W) or (N, H, W, 1|C), True where the image is kept.
      labels: optional class ids guiding the generated region (default: unconditional).
    Returns:
      uint8 (N, H, W, C): the given pixels where ``mask`` is True (exactly), generated ones
      elsewhere. A latent patch is held known when all its pixels are.
    """
    x = self._images(images)
    n = len(x)
    m = np.asarray(mask, bool)
    m = m[None, ..., None] if m.ndim == 2 else m[..., None] if m.ndim == 3 else m
    try:
      m = np.broadcast_to(m, x.shape).copy()
    except ValueError:
      raise ValueError(f"mask {np.shape(mask)} does not fit the images {x.shape}: give (H, W), "
                       "(N, H, W) or (N, H, W, 1|C), True where the image is kept") from None
    given = dict(images=x, image_mask=m)
    if labels is not None:
      given["labels"] = self.check_labels(labels)
      if len(given["labels"]) != n:
        raise ValueError(f"{len(given['labels'])} labels for {n} images")
    out, _ = self.generate("inpaint", n, seed=seed, first_index=first_index, **given)
    return to_uint8(np.where(given["image_mask"], x, out))

  def infill(self, texts, *, seed: int = 0, first_index: int = 0) -> list[str]:
    """Fills each ``[MASK]`` of each text with one generated token; the rest is kept."""
    self._need_text("infill")
    texts = self._texts(texts, "texts")
    tok, T = self.tokenizer, self.max_text_len
    seqs, masks = [], []
    for i, t in enumerate(texts):
      parts = t.split(MASK_WORD)
      if len(parts) == 1:
        raise ValueError(f"text {i} ({t!r}) has no {MASK_WORD} to fill")
      ids, known = [], []
      for j, part in enumerate(parts):
        if j:
          ids.append(tok.unk_id)      # any id: the position is generated
          known.append(False)
        warn_unknown(tok, part, f"text {i}")
        piece = tok.encode(part.strip()) if part.strip() else []
        ids += piece
        known += [True] * len(piece)
      if len(ids) > T - 1:
        raise ValueError(f"text {i} needs {len(ids)} tokens and eos, more than the model's "
                         f"max_text_len = {T}: shorten it")
      row = np.full((T,), tok.pad_id, np.int32)
      row[:len(ids)] = ids
      row[len(ids)] = tok.eos_id
      seqs.append(row)
      masks.append(np.concatenate([known, np.ones(T - len(known), bool)]))
    _, tokens = self.generate("text", len(texts), seed=seed, first_index=first_index,
                              text=np.stack(seqs), text_mask=np.stack(masks))
    return [tok.decode(t) for t in tokens]

  # --- video: the same tasks on a clip model (model.frames > 1) -------------------------
  def class_to_video(self, labels, *, seed: int = 0, first_index: int = 0) -> np.ndarray:
    """uint8 (len(labels), T, H, W, C), one clip of each class id in ``labels``."""
    self._need_clips("class_to_video", "class_to_image")
    return self.class_to_image(labels, seed=seed, first_index=first_index)

  def text_to_video(self, prompts, *, seed: int = 0, first_index: int = 0) -> np.ndarray:
    """uint8 (len(prompts), T, H, W, C), one clip per caption."""
    self._need_clips("text_to_video", "text_to_image")
    return self.text_to_image(prompts, seed=seed, first_index=first_index)

  def caption_video(self, videos, *, seed: int = 0, first_index: int = 0) -> list[str]:
    """One caption per clip (uint8 or [-1, 1] float (N, T, H, W, C))."""
    self._need_clips("caption_video", "caption")
    return self.caption(videos, seed=seed, first_index=first_index)

  def video_vqa(self, videos, questions, *, temperature: float | None = 0.0, seed: int = 0,
                first_index: int = 0) -> list[str]:
    """One answer per (clip, question); ``temperature`` as in ``vqa``."""
    self._need_clips("video_vqa", "vqa")
    return self.vqa(videos, questions, temperature=temperature, seed=seed,
                    first_index=first_index)

  def joint_video(self, n: int, *, seed: int = 0, first_index: int = 0):
    """``n`` clips and their captions generated together: (uint8 (n, T, H, W, C), list[str])."""
    self._need_clips("joint_video", "joint")
    return self.joint(n, seed=seed, first_index=first_index)

  def predict(self, videos, *, labels=None, seed: int = 0, first_index: int = 0) -> np.ndarray:
    """Video prediction: keeps the first ``T // 2`` frames of each clip (uint8 or [-1, 1] float
    (N, T, H, W, C)) and generates the rest. Returns uint8 (N, T, H, W, C), the kept frames
    exactly. ``labels`` optionally guide the generated frames, as in ``inpaint``."""
    self._need_clips("predict", "inpaint")
    return self.inpaint(videos, self._frame_mask("predict"), labels=labels, seed=seed,
                        first_index=first_index)

  def interpolate(self, videos, *, labels=None, seed: int = 0,
                  first_index: int = 0) -> np.ndarray:
    """Frame interpolation: keeps each clip's first and last frames and generates those
    between. Shapes as in ``predict``."""
    self._need_clips("interpolate", "inpaint")
    return self.inpaint(videos, self._frame_mask("interpolate"), labels=labels, seed=seed,
                        first_index=first_index)

  def _frame_mask(self, task) -> np.ndarray:
    """bool (T, H, W, 1) from ``tasks.frame_mask`` (T, 1, 1), the shape ``inpaint`` takes."""
    h, w = self.image_shape[1:3]
    return np.broadcast_to(tasks_lib.frame_mask(task, self.frames)[..., None],
                           (self.frames, h, w, 1))

  def text_nll(self, texts, *, num_draws: int = 16, seed: int = 0):
    """SEDD's bound on each text's negative log-likelihood (the text task, image absent; the
    Markov ablation's absorbing-chain ELBO for a model trained with it).

    The text's tokens and its eos count; the padding after eos is left out (as in the field's
    perplexities of padded text). Returns (nll nats per text (n,), tokens per text incl. eos
    (n,)); ``evaluation.perplexity.perplexity_from_elbo(nll, tokens)`` makes a perplexity (the
    bound's, up to Monte-Carlo noise).
    """
    from mdm_jax import losses
    from mdm_jax.evaluation import perplexity
    self._need_text("text_nll")
    texts = self._texts(texts, "texts")
    text0 = encode_prompts(self.tokenizer, texts, self.max_text_len)
    tokens = np.minimum(np.asarray([len(self.tokenizer.encode(t)) + 1 for t in texts]),
                        self.max_text_len)
    mask = np.arange(self.max_text_len)[None] < tokens[:, None]
    trainer = self.run.trainer
    fns = self.__dict__.setdefault("_nll_fns", {})
    if num_draws not in fns:
      fns[num_draws] = jax.jit(lambda v, x, m, rng: perplexity.sedd_nll_bound(
          trainer.model.apply(v, x, rng, trainer.loss_cfg, num_draws, trainer.procs,
                              method=losses.text_nll_bound), m))
    variables = {"params": self.run.state["ema"], "latent_stats": self.run.state["latent_stats"]}
    bs, n, key, out = min(self.batch_size, len(texts)), len(texts), jax.random.PRNGKey(seed), []
    for start in range(0, n, bs):
      idx = np.arange(start, start + bs) % n
      with trainer.mesh_context():
        nll = fns[num_draws](variables, jnp.asarray(text0[idx]), jnp.asarray(mask[idx]),
                             jax.random.fold_in(key, start))
      out.append(np.asarray(nll)[:min(bs, n - start)])
    return np.concatenate(out).astype(np.float64), tokens


def load(path, *, batch_size: int | None = None, steps: int | None = None,
         guidance: float | None = None, temperature: float | None = None,
         caption_guidance: float | None = None, joint_order: str | None = None) -> Pipeline:
  """Opens a training workdir or an ``experiments.export`` folder for generation.

  Args:
    path: local or any ``etils.epath`` path (gs://...).
    batch_size: samples per compiled call (default: the config's ``sample.num``).
    steps, guidance, temperature, caption_guidance, joint_order: sampler settings replacing
      the config's (``sample.steps``, ``sample.guidance``, ``sample.text_temperature``,
      ``sample.caption_guidance``, ``sample.joint_order``).
  """
  return Pipeline(open_run(path, sampler_overrides(steps, guidance, temperature,
                                                   caption_guidance, joint_order)),
                  batch_size=batch_size)
