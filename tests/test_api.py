"""mdm_jax.load and its per-task methods, experiments.export, and experiments.sample at scale
(batches, kill + resume, ADM's layout), on one `tiny` workdir trained here (~50 s of CPU).

Sampling runs with 2 sampler steps in batches of 4, so each task compiles once (a few s)."""
from __future__ import annotations

import logging
import os
import shutil
import sys

import numpy as np
import pytest

import mdm_jax
from mdm_jax import api
from subproc import run, run_module

BATCH, STEPS, SIZE = 4, 2, (8, 8, 1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("api") / "wd"
  # Stopped by its own SIGKILL after the last step's checkpoint: the tests open the run, and
  # its final samples (shapes no test samples with) would only be compiled and thrown away.
  proc = run_module("experiments.train", "--config=tiny", f"--workdir={wd}", "--kill_at_step=6")
  assert proc.returncode == -9, proc.stderr[-3000:]
  return wd


@pytest.fixture(scope="module")
def pipe(workdir):
  return mdm_jax.load(str(workdir), batch_size=BATCH, steps=STEPS)


def test_load_reads_the_ema_parameters_only(pipe):
  assert tuple(sorted(pipe.run.state)) == tuple(sorted(api.SAMPLING_KEYS))
  assert pipe.step == 6 and pipe.num_classes == 10 and pipe.image_shape == SIZE
  assert pipe.run.trainer.sample_cfg.steps == STEPS


def test_load_overrides_every_sampler_setting(workdir):
  """Each of load's sampler arguments reaches the SampleConfig the pipeline samples with."""
  got = mdm_jax.load(str(workdir), steps=3, guidance=1.5, temperature=0.25,
                     caption_guidance=2.5, joint_order="image_first").run.trainer.sample_cfg
  assert (got.steps, got.guidance, got.text_temperature, got.caption_guidance,
          got.joint_order) == (3, 1.5, 0.25, 2.5, "image_first")
  assert mdm_jax.load(str(workdir)).run.trainer.sample_cfg.joint_order == "gibbs"


def test_class_to_image(pipe):
  labels = [3, 1, 4, 1, 5, 9]                  # 2 batches of 4, the last padded
  images = pipe.class_to_image(labels)
  assert images.dtype == np.uint8 and images.shape == (6, *SIZE)
  np.testing.assert_array_equal(pipe.class_to_image(labels), images)     # seeded
  # Split into calls at a batch boundary with first_index: the same samples.
  parts = np.concatenate([pipe.class_to_image(labels[:4]),
                          pipe.class_to_image(labels[4:], first_index=4)])
  np.testing.assert_array_equal(parts, images)
  assert not np.array_equal(pipe.class_to_image([3] * 4), pipe.class_to_image([5] * 4))
  assert not np.array_equal(pipe.class_to_image([3] * 4, seed=1), pipe.class_to_image([3] * 4))
  assert len(api.to_pil(images)) == 6 and api.to_pil(images)[0].size == (8, 8)


@pytest.mark.parametrize("method,args", [("class_to_video", ([3],)), ("predict", (None,)),
                                         ("joint_video", (1,))])
def test_video_methods_refuse_an_image_model(pipe, method, args):
  with pytest.raises(ValueError, match=r"takes images \(model.frames=1\); use "):
    getattr(pipe, method)(*args)


@pytest.mark.parametrize("labels,match", [([10], "label 10 is out of range: this run has 10"),
                                          ([-3], "label -3 is out of range"),
                                          ([], "non-empty"), ([1.5], "integers")])
def test_invalid_labels_are_clear_errors(pipe, labels, match):
  with pytest.raises((ValueError, TypeError), match=match):
    pipe.class_to_image(np.asarray(labels, float if labels == [1.5] else int))


def test_text_to_image_warns_what_it_kept(pipe, caplog):
  prompts = ["seven, a handwritten digit", "two, a handwritten digit"]
  images = pipe.text_to_image(prompts)
  assert images.dtype == np.uint8 and images.shape == (2, *SIZE)
  assert not np.array_equal(images[0], pipe.text_to_image(prompts[::-1])[0])
  with caplog.at_level(logging.WARNING):
    pipe.text_to_image(["seven " * 40 + "digit", "seven \u2603 digit"])
  assert "only 'seven seven" in caplog.text and "max_text_len - 1 = 11" in caplog.text
  assert "does not know, \u2603" in caplog.text and "'seven  \u2047  digit'" in caplog.text
  with pytest.raises(ValueError, match="no prompts given"):
    pipe.text_to_image([])


def test_caption_and_vqa(pipe):
  images = pipe.class_to_image([0, 1, 2, 3, 4])
  captions = pipe.caption(images)
  assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
  # uint8, [-1, 1] floats and PIL images are the same input.
  assert pipe.caption(images.astype(np.float32) / 127.5 - 1) == captions
  assert pipe.caption(api.to_pil(images)) == captions
  answers = pipe.vqa(images, ["what digit is this?"] * 5)
  assert len(answers) == 5 and all(isinstance(a, str) for a in answers)
  with pytest.raises(ValueError, match="5 images for 2 inputs"):
    pipe.vqa(images, ["what digit is this?"] * 2)
  with pytest.raises(ValueError, match=r"images must be \(N, 8, 8, 1\)"):
    pipe.caption(np.zeros((2, 16, 16, 1), np.uint8))


def test_joint_and_text(pipe):
  images, captions = pipe.joint(5)
  assert images.dtype == np.uint8 and images.shape == (5, *SIZE) and len(captions) == 5
  assert len(pipe.text(3)) == 3
  with pytest.raises(ValueError, match="n=0 must be >= 1"):
    pipe.joint(0)


def test_inpaint_keeps_the_known_region_and_conditions_on_it(pipe):
  images = pipe.class_to_image([0, 1, 2, 3])
  other = images.copy()
  other[:, :4] = 255 - other[:, :4]           # a different known (top) half
  mask = np.zeros((8, 8), bool)
  mask[:4] = True
  a, b = pipe.inpaint(images, mask), pipe.inpaint(other, mask)
  assert a.dtype == np.uint8 and a.shape == (4, *SIZE)
  np.testing.assert_array_equal(a[:, :4], images[:, :4])
  np.testing.assert_array_equal(b[:, :4], other[:, :4])
  # Same seed, same noise: the generated bottom half differs only through the known half. After
  # 6 training steps that dependence is below uint8 rounding: compare the float samples.
  m4 = np.broadcast_to(mask[None, :, :, None], (4, *SIZE))
  fa, _ = pipe.generate("inpaint", 4, images=images / 127.5 - 1, image_mask=m4)
  fb, _ = pipe.generate("inpaint", 4, images=other / 127.5 - 1, image_mask=m4)
  fc, _ = pipe.generate("inpaint", 4, images=images / 127.5 - 1, image_mask=m4)
  np.testing.assert_array_equal(fa, fc)
  assert np.abs(fa - fb)[:, 4:].max() > 1e-6
  with pytest.raises(ValueError, match="does not fit the images"):
    pipe.inpaint(images, np.zeros((5, 8), bool))


def test_infill_keeps_the_unmasked_words(pipe):
  texts = ["seven, a [MASK] digit", "[MASK] [MASK] handwritten digit"]
  out = pipe.infill(texts)
  assert len(out) == 2
  for text, got in zip(texts, out):
    at = 0
    for part in (p.strip() for p in text.split("[MASK]")):
      if part:
        at = got.find(part, at)
        assert at >= 0, (text, got)           # every given part, in order
  with pytest.raises(ValueError, match=r"has no \[MASK\] to fill"):
    pipe.infill(["seven"])
  with pytest.raises(ValueError, match="more than the model's max_text_len = 12"):
    pipe.infill(["seven " * 20 + "[MASK]"])


def test_export_round_trip(pipe, workdir, tmp_path):
  from experiments import export
  out = tmp_path / "export"
  result = export.export(str(workdir), str(out))
  assert result["step"] == 6
  assert {"checkpoints", "ema.safetensors", "config.json", "tokenizer.model"} <= set(
      result["files"])
  want = pipe.class_to_image([7, 2, 7, 2])
  loaded = mdm_jax.load(str(out), batch_size=BATCH, steps=STEPS)
  np.testing.assert_array_equal(loaded.class_to_image([7, 2, 7, 2]), want)
  shutil.rmtree(out / "checkpoints")           # the safetensors file alone
  loaded = mdm_jax.load(str(out), batch_size=BATCH, steps=STEPS)
  assert loaded.step == 6
  np.testing.assert_array_equal(loaded.class_to_image([7, 2, 7, 2]), want)
  with pytest.raises(FileExistsError, match="is not empty"):
    export.export(str(workdir), str(out))


# ----------------------------------------------------------------------------- resume checks
def _copy(workdir, tmp_path):
  """A copy of the trained workdir (its checkpoints and tokenizer) to change at will."""
  dst = tmp_path / "wd"
  shutil.copytree(workdir, dst, ignore=shutil.ignore_patterns("tb", "samples", "eval*"))
  return dst


def _same_size_other_tokenizer(own):
  """A tokenizer of the run's vocabulary size with other pieces (trained on upper-cased text):
  the case that loads and runs without a word unless it is checked."""
  from data import pipeline
  from data import tokenizer as tokenizer_lib
  other = tokenizer_lib.Tokenizer.train(
      [t.upper() for t in pipeline.text_corpus("digits")], None, own.vocab_size)
  assert other.vocab_size == own.vocab_size and other.sha256 != own.sha256
  assert other.encode("seven") != own.encode("seven")
  return other


def test_the_tokenizer_belongs_to_the_checkpoint(workdir, tmp_path, caplog):
  """mdm_jax.load and export refuse a different, corrupt or missing tokenizer.model naming the
  file; the export carries the digest (in its checkpoint and in run_info.json for the
  safetensors-only form); a checkpoint older than digests opens with a logged note."""
  import hashlib
  import json
  from data import tokenizer as tokenizer_lib
  from experiments import export
  wd = _copy(workdir, tmp_path)
  tok_file = wd / "tokenizer.model"
  own_bytes = tok_file.read_bytes()
  own = tokenizer_lib.Tokenizer.load(tok_file)
  assert own.sha256 == hashlib.sha256(own_bytes).hexdigest()
  _same_size_other_tokenizer(own).save(tok_file)
  wrong = (rf"{tok_file} is not the tokenizer checkpoint 6 of {wd} was trained with: .*the "
           rf"same vocabulary size, {own.vocab_size}, but other pieces.*Put back")
  with pytest.raises(ValueError, match=wrong):
    mdm_jax.load(str(wd))
  with pytest.raises(ValueError, match=wrong):
    export.export(str(wd), str(tmp_path / "refused"))
  tok_file.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(ValueError, match=rf"{tok_file} is not a usable tokenizer model \(4096 "
                     "bytes"):
    mdm_jax.load(str(wd))
  tok_file.unlink()
  with pytest.raises(FileNotFoundError, match=rf"{tok_file} is missing: checkpoint 6 of {wd} "
                     rf"was trained with the tokenizer that file held \(sha256 {own.sha256}\)"):
    mdm_jax.load(str(wd))
  tok_file.write_bytes(own_bytes)
  out = tmp_path / "export"
  export.export(str(wd), str(out))
  assert json.loads((out / "run_info.json").read_text())["assets"] == {
      "tokenizer": {"file": "tokenizer.model", "sha256": own.sha256,
                    "vocab_size": own.vocab_size}}
  _same_size_other_tokenizer(own).save(out / "tokenizer.model")
  with pytest.raises(ValueError, match=rf"is not the tokenizer checkpoint 6 of {out} was"):
    mdm_jax.load(str(out))
  shutil.rmtree(out / "checkpoints")           # the safetensors form checks run_info's record
  with pytest.raises(ValueError, match=rf"is not the tokenizer the export {out} was trained"):
    mdm_jax.load(str(out))
  for step in ("3", "6"):                      # a workdir from before the digests
    shutil.rmtree(wd / "checkpoints" / step / "assets")
  with caplog.at_level(logging.WARNING):
    assert mdm_jax.load(str(wd), batch_size=BATCH, steps=STEPS).step == 6
  assert f"checkpoint 6 of {wd} predates tokenizer digests" in caplog.text


def test_resume_refuses_config_drift_and_a_lost_tokenizer(workdir, tmp_path):
  """The train command on a trained workdir: a changed architecture is refused naming the field
  and the flag, and runs with the flag (the new checkpoint holds the new config); a missing
  tokenizer is an error and is not trained again; sample refuses a corrupt one before any work
  (evaluate, export and mdm_jax.load open a run through the same mdm_jax.api.open_run)."""
  from data import tokenizer as tokenizer_lib
  from mdm_jax.training import checkpoint as ckpt_lib
  wd = _copy(workdir, tmp_path)
  tok_file = wd / "tokenizer.model"
  own_bytes = tok_file.read_bytes()
  train = ["--config=tiny", f"--workdir={wd}", "--config.total_steps=7"]
  refused = run_module("experiments.train", *train, "--config.model.directions=1")
  assert refused.returncode != 0
  assert (f"The config differs from the one checkpoint 6 of {wd} was trained with:\n"
          "  model.directions: 4 -> 1 (the network)\n  total_steps: 6 -> 7" in refused.stderr)
  assert ("pass --allow_config_change to resume with the changed model.directions on purpose"
          in refused.stderr), refused.stderr[-3000:]
  tok_file.unlink()
  lost = run_module("experiments.train", *train)
  assert lost.returncode != 0 and f"{tok_file} is missing: checkpoint 6 of {wd}" in lost.stderr
  assert "It is never trained again" in lost.stderr and not tok_file.exists()
  tok_file.write_bytes(b"\x00" * 100)
  sample = run_module("experiments.sample", f"--workdir={wd}", "--task=class",
                      f"--out={tmp_path / 's.npz'}")
  assert sample.returncode != 0
  assert f"{tok_file} is not a usable tokenizer model (100 bytes" in sample.stderr
  assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6"]
  tok_file.write_bytes(own_bytes)
  # With the flag: step 7 trains and is saved (then --kill_at_step ends the process before the
  # final samples, which this test does not need).
  allowed = run_module("experiments.train", *train, "--config.model.directions=1",
                       "--allow_config_change", "--kill_at_step=7")
  assert allowed.returncode == -9, allowed.stderr[-3000:]
  assert ("Resuming with a changed config (--allow_config_change): model.directions: 4 -> 1"
          in allowed.stderr)
  assert "Resuming with a changed setting: total_steps: 6 -> 7" in allowed.stderr
  assert "Resumed from the checkpoint at step 6" in allowed.stderr
  reader = ckpt_lib.Checkpointer(wd, read_only=True)
  assert reader.all_steps() == [6, 7]
  assert reader.restore_config(7)["model"]["directions"] == 1
  assert reader.restore_assets(7)["tokenizer"]["sha256"] == tokenizer_lib.Tokenizer(
      own_bytes).sha256
  reader.close()


# ----------------------------------------------------------------------------- sample CLI
def test_sample_adm_killed_and_resumed(pipe, workdir, tmp_path):
  """10 class samples in batches of 4 (3 batches), killed after 2, resumed: ADM's layout,
  the finished batches not regenerated, the samples those of one uninterrupted call."""
  out = tmp_path / "fid.npz"
  args = [f"--workdir={workdir}", "--task=class", "--num=10", "--batch_size=4",
          f"--steps={STEPS}", "--format=adm", f"--out={out}"]
  killed = run_module("experiments.sample", *args, "--kill_after_batches=2")
  assert killed.returncode == -9, killed.stderr[-3000:]
  shards = tmp_path / "fid.shards"
  assert sorted(os.listdir(shards)) == ["batch_000000.npz", "batch_000001.npz", "meta.json"]
  assert "batch 2/3 | 2/3 batches done" in killed.stdout and "samples/s" in killed.stdout
  stamps = {f: os.stat(shards / f).st_mtime_ns for f in os.listdir(shards)}
  resumed = run_module("experiments.sample", *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming: 2 of 3 batches already" in resumed.stdout
  assert "batch 3/3" in resumed.stdout and "batch 1/3" not in resumed.stdout
  assert all(os.stat(shards / f).st_mtime_ns == t for f, t in stamps.items())
  with np.load(out) as f:                      # as ADM's evaluator reads it
    assert sorted(f.files) == ["arr_0", "arr_1"]
    arr_0, arr_1 = f["arr_0"], f["arr_1"]
  assert arr_0.dtype == np.uint8 and arr_0.shape == (10, *SIZE)
  np.testing.assert_array_equal(arr_1, np.arange(10) % 10)
  # The API in this process (8 devices, not 1): the same samples up to rounding.
  want = pipe.class_to_image(np.arange(10) % 10)
  assert np.abs(arr_0.astype(int) - want).max() <= 2
  changed = run_module("experiments.sample", *args[:-1], "--seed=1", f"--out={out}")
  assert changed.returncode != 0 and "holds batches of a different sampling run" in (
      changed.stderr) and "seed: 0 there, 1 now" in changed.stderr


@pytest.mark.parametrize("flag,match", [("--label=99", "--label=99: label 99 is out of range"),
                                        ("--label=-3", "label -3 is out of range"),
                                        ("--num=0", "--num=0: ask for at least one sample")])
def test_sample_refuses_bad_values_before_compiling(workdir, tmp_path, flag, match):
  proc = run_module("experiments.sample", f"--workdir={workdir}", "--task=class", flag,
                    f"--out={tmp_path / 'x.npz'}")
  assert proc.returncode != 0 and match in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "x.shards")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
  """An .npz of InceptionV3 weights in PyTorch's state_dict layout, random (ADM's keys and
  shapes; 95 MB, written once for the tests that read it)."""
  path = tmp_path_factory.mktemp("inception") / "pt_inception.npz"
  _random_inception_weights(path)
  return path


def _random_inception_weights(path):
  from mdm_jax.evaluation import inception
  rng = np.random.default_rng(0)
  out = {}
  for name, shape in inception.inception_weight_shapes().items():
    if name.endswith("running_var"):
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name.endswith("conv.weight"):
      out[name] = (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    else:
      out[name] = (0.1 * rng.normal(size=shape)).astype(np.float32)
  np.savez(path, **out)


def test_evaluate_against_an_adm_reference_batch(workdir, tmp_path, inception_weights):
  """The reference batch scored against itself: FID ~0, precision = recall = 1."""
  import json
  from data import digits
  x, _ = digits.load("test")
  ref = tmp_path / "ref.npz"
  np.savez(ref, arr_0=x[:8, ..., None])           # ADM's key, uint8 NHWC
  proc = run_module("experiments.evaluate", f"--workdir={workdir}", "--per_class=1",
                    "--num_heldout=4", "--batch=4", f"--steps={STEPS}", f"--ref_batch={ref}",
                    f"--inception_weights={inception_weights}", f"--samples={ref}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((workdir / "eval.json").read_text())
  assert abs(result["fid"]) < 1e-3, result["fid"]
  assert result["precision_inception"] == 1.0 and result["recall_inception"] == 1.0
  assert result["num_samples"] == result["num_reference"] == 8
  assert np.isfinite(result["inception_score"]) and result["inception_score"] >= 1.0 - 1e-6
  assert "| fid |" in proc.stdout and "| caption_accuracy |" in proc.stdout
  # The digits metrics as before, plus the held-out captions' likelihood.
  assert result["text_perplexity"] > 1.0 and result["text_bits_per_token"] > 0
  assert abs(2 ** result["text_bits_per_token"] - result["text_perplexity"]) < 1e-6 * (
      result["text_perplexity"])
  assert "| text_perplexity |" in proc.stdout
  # The multimodal tasks: 4 held-out captions, 10 templates x 10 digits, 1 x 10 joint pairs
  # (fractions of those counts).
  for key, n in (("t2i_accuracy", 4), ("t2i_accuracy_templates", 100),
                 ("joint_consistency", 10)):
    assert 0.0 <= result[key] <= 1.0 and abs(result[key] * n - round(result[key] * n)) < 1e-6
    assert f"| {key} |" in proc.stdout
  assert len(result["joint_examples"]) == 10


def test_evaluate_against_a_dataset_split_caches_its_statistics(workdir, tmp_path,
                                                               inception_weights):
  """--ref_split: the split's own first 8 images scored against it give FID ~0; the statistics
  are cached in the workdir and read back (a tampered cache shows in the next FID: mu + 1 in
  each of the 2048 dimensions adds exactly 2048). Keys: tests/test_eval_reference_stats.py."""
  import json
  from data import digits
  x, _ = digits.load("test")
  samples = tmp_path / "samples.npz"
  np.savez(samples, arr_0=x[:8, ..., None])
  args = [f"--workdir={workdir}", "--tasks=", "--batch=4", "--ref_split=test",
          f"--inception_weights={inception_weights}", f"--samples={samples}"]

  def evaluate(*extra):
    proc = run_module("experiments.evaluate", *args, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((workdir / "eval.json").read_text())

  (workdir / "eval.json").unlink(missing_ok=True)   # else it keeps an earlier test's scores
  first = evaluate("--ref_num=8")
  assert abs(first["fid"]) < 1e-3 and first["num_reference"] == 8
  assert not first["reference_cached"] and "class_accuracy" not in first
  path = first["reference_cache"]
  with np.load(path) as data:
    assert data["features"].shape == (8, 2048)
    tampered = dict(data)
  tampered["mu"] = tampered["mu"] + 1.0
  np.savez(path, **tampered)
  second = evaluate("--ref_num=8")
  assert second["reference_cached"] and second["reference_cache"] == path
  np.testing.assert_allclose(second["fid"], first["fid"] + 2048.0, rtol=1e-6)



# ----------------------------------------------------------------------------- evaluate: checks first
@pytest.fixture
def no_sampling(monkeypatch):
  """Building the sampling pipeline fails: a refusal must come before it."""
  def refuse(*args, **kwargs):
    raise AssertionError("evaluate reached sampling")
  monkeypatch.setattr(api.Pipeline, "__init__", refuse)


@pytest.mark.parametrize("kwargs,match", [
    (dict(per_class=1), "--per_class=1: the within-class diversity .* needs >= 2"),
    (dict(per_class=2, num_heldout=3), "--num_heldout=3: the classifier's FID"),
    (dict(tasks=(), ref_split="validation", samples="SAMPLES"),
     "--ref_split=validation: the run's dataset digits cannot open it .*Unknown digits split"),
    (dict(tasks=(), ref_split="test", ref_num=4, samples="SAMPLES", out_dir="FILE/out"),
     "cannot write to .*FILE/out .*--out_dir="),
])
def test_evaluate_refuses_before_sampling(workdir, tmp_path, no_sampling, inception_weights,
                                          kwargs, match):
  from experiments import evaluate as ev
  samples = tmp_path / "s.npz"
  if "samples" in kwargs:
    np.savez(samples, arr_0=np.zeros((8, *SIZE), np.uint8))
    kwargs = dict(kwargs, samples=str(samples), inception_weights=str(inception_weights))
  if "out_dir" in kwargs:
    (tmp_path / "FILE").write_text("")   # no folder can be made under a file, even by root
    kwargs["out_dir"] = str(tmp_path / kwargs["out_dir"])
  with pytest.raises(ev.EvaluateUsageError, match=match):
    ev.evaluate(str(workdir), batch=BATCH, **kwargs)


def test_evaluate_per_class_1_is_a_usage_error_before_any_sample(workdir):
  proc = run_module("experiments.evaluate", f"--workdir={workdir}", "--per_class=1")
  assert proc.returncode != 0 and "--per_class=1: the within-class" in proc.stderr
  assert "Traceback" not in proc.stderr and "class2img_seconds" not in proc.stdout


def test_evaluate_prints_the_table_before_writing(workdir, monkeypatch):
  """A write that fails (disk full) after the scoring: the results were shown first."""
  from experiments import evaluate as ev
  shown = []

  def full(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(ev, "write_eval_json", full)
  with pytest.raises(OSError, match="No space left"):
    ev.evaluate(str(workdir), tasks=("text",), num_heldout=2, text_draws=1, batch=2,
                show=shown.append, overrides={"sample.steps": STEPS})
  assert len(shown) == 1 and shown[0]["text_perplexity"] > 1.0


def _tree(path):
  return {os.path.relpath(os.path.join(d, f), path): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(path) for f in files}


def test_evaluate_a_read_only_workdir_with_out_dir(workdir, tmp_path):
  """The workdir bind-mounted read-only (a user and mount namespace: root cannot write there
  either): refused before sampling with the fix named; with --out_dir, evaluated, eval.json
  written there, a truncated eval.json found there set aside, and the workdir untouched."""
  out = tmp_path / "out"
  out.mkdir()
  (out / "eval.json").write_text('{"step": 6, "conf')          # a killed plain write
  args = (f"--workdir={workdir} --tasks=text --num_heldout=2 --text_draws=1 --batch=2 "
          f"--steps={STEPS}")
  py = f"{sys.executable} -m experiments.evaluate {args}"
  script = (f"mount --bind {workdir} {workdir} && mount -o remount,ro,bind {workdir} && "
            f"{{ touch {workdir}/probe && echo WRITABLE; "
            f"{py}; echo RC1=$?; {py} --out_dir={out}; echo RC2=$?; }}")
  before = _tree(workdir)
  proc = run(["unshare", "--map-root-user", "--mount", "sh", "-c", script])
  assert "RC2=" in proc.stdout, proc.stderr[-3000:]
  assert "WRITABLE" not in proc.stdout and "RC1=0" not in proc.stdout
  assert f"cannot write to {workdir}" in proc.stderr and "--out_dir=" in proc.stderr
  assert "RC2=0" in proc.stdout, proc.stderr[-3000:]
  assert "| text_perplexity |" in proc.stdout
  import json
  result = json.loads((out / "eval.json").read_text())
  assert result["step"] == 6 and result["text_perplexity"] > 1.0
  aside = [f for f in os.listdir(out) if f.startswith("eval.json.unreadable-")]
  assert len(aside) == 1 and "set aside as" in proc.stderr
  assert _tree(workdir) == before


# ----------------------------------------------------------------------------- sample: one writer, its file name
def test_sample_refuses_a_wrong_suffix_and_a_second_writer(workdir, tmp_path):
  from experiments import sample_io
  proc = run_module("experiments.sample", f"--workdir={workdir}", "--task=class",
                    f"--out={tmp_path / 'c.txt'}")
  assert proc.returncode != 0, proc.stderr[-2000:]
  assert f"--task=class writes .npz files; pass --out={tmp_path / 'c.npz'}" in proc.stderr
  text = run_module("experiments.sample", f"--workdir={workdir}", "--task=caption",
                    f"--out={tmp_path / 'c.npz'}")
  assert text.returncode != 0 and "writes .jsonl files" in text.stderr
  assert os.listdir(tmp_path) == []
  with sample_io.OutputLock(tmp_path / "x.lock"):    # another writer of x.npz
    proc = run_module("experiments.sample", f"--workdir={workdir}", "--task=class",
                      f"--out={tmp_path / 'x.npz'}")
  assert proc.returncode != 0 and "another sampling process writes this output" in proc.stderr
  assert f'"pid": {os.getpid()}' in proc.stderr and "Traceback" not in proc.stderr
  assert os.listdir(tmp_path) == []


def test_text_nll(pipe):
  from mdm_jax.evaluation import perplexity
  texts = ["seven, a handwritten digit", "two", "zero, number zero", "one", "five"]
  nll, tokens = pipe.text_nll(texts, num_draws=4)
  assert nll.shape == (5,) and np.all(np.isfinite(nll)) and np.all(nll > 0)
  np.testing.assert_array_equal(tokens, [len(pipe.tokenizer.encode(t)) + 1 for t in texts])
  np.testing.assert_array_equal(pipe.text_nll(texts, num_draws=4)[0], nll)     # seeded
  # Batches of 4: the first batch's bounds do not depend on the texts after it.
  alone, _ = pipe.text_nll(texts[:4], num_draws=4)
  np.testing.assert_allclose(alone, nll[:4], rtol=1e-5)
  assert perplexity.perplexity_from_elbo(nll, tokens) > 1.0


def test_import_mdm_jax_stays_light():
  """`import mdm_jax` loads neither the API nor the data stack (load imports them)."""
  code = ("import sys, mdm_jax; assert callable(mdm_jax.load); "
          "print(sorted(m for m in ('mdm_jax.api', 'data', 'sentencepiece', 'grain', 'jax') "
          "if m in sys.modules))")
  proc = run([sys.executable, "-c", code])
  assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


# ----------------------------------------------------------------------------- sample: infill, inpaint, vqa
def _jsonl(path):
  import json
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_sample_mask_regions_and_vqa_default():
  """The --mask names (True = kept) against hand-built masks, and VQA's default temperature, in
  a fresh process (experiments.sample defines absl flags at import)."""
  code = """
import numpy as np
from experiments import sample
want = {n: np.zeros((8, 6), bool) for n in sample.MASK_REGIONS}
want["top"][:4] = True; want["bottom"][4:] = True; want["left"][:, :3] = True
want["right"][:, 3:] = True; want["center"][2:6, 1:4] = True
for n, m in want.items():
  np.testing.assert_array_equal(sample.inpaint_mask(n, (8, 6)), m)
assert sample.vqa_temperature(None) == 0.0 and sample.vqa_temperature(0.7) == 0.7
assert sample.FLAGS["temperature"].default is None
print("ok")
"""
  proc = run([sys.executable, "-c", code])
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_sample_infill_inpaint_and_greedy_vqa(pipe, workdir, tmp_path):
  from data import pipeline
  common = [f"--workdir={workdir}", "--batch_size=4", f"--steps={STEPS}"]
  # Infill: every [MASK] filled, the given words kept in order.
  prompt = "[MASK] written by hand"
  proc = run_module("experiments.sample", *common, "--task=infill", f"--prompt={prompt}",
                    "--num=4", f"--out={tmp_path / 'infill.jsonl'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = _jsonl(tmp_path / "infill.jsonl")
  assert [r["index"] for r in rows] == [0, 1, 2, 3] and all(r["prompt"] == prompt for r in rows)
  assert all(r["text"].endswith("written by hand") and "[MASK]" not in r["text"] for r in rows)
  bad = run_module("experiments.sample", *common, "--task=infill", "--prompt=seven",
                   f"--out={tmp_path / 'bad.jsonl'}")
  assert bad.returncode != 0 and "fills the [MASK]s of --prompt" in bad.stderr
  # Inpaint with a mask file: the kept region is the held-out image's, exactly.
  keep = np.zeros((8, 8), bool)
  keep[:, 5:] = True
  keep[0] = True
  np.save(tmp_path / "keep.npy", keep)
  proc = run_module("experiments.sample", *common, "--task=inpaint", "--num=4",
                    f"--mask={tmp_path / 'keep.npy'}", f"--out={tmp_path / 'inp.npz'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  dc = pipe.run.config.data
  given = np.stack([e["image"] for e in pipeline.eval_examples(
      dc.name, split=pipeline.heldout_split(dc.name), num=4, image_size=dc.image_size,
      channels=dc.channels, data_dir=dc.data_dir)])
  with np.load(tmp_path / "inp.npz") as f:
    got = f["images"]
  np.testing.assert_array_equal(got[:, keep], api.to_uint8(given)[:, keep])
  assert not np.array_equal(got[:, ~keep], api.to_uint8(given)[:, ~keep])
  bad = run_module("experiments.sample", *common, "--task=inpaint", "--mask=diagonal",
                   f"--out={tmp_path / 'bad.npz'}")
  assert bad.returncode != 0 and "--mask=diagonal: give one of top, bottom" in bad.stderr
  # VQA, no --temperature: greedy, so another seed gives the same answers.
  answers = []
  for seed in (0, 1):
    out = tmp_path / f"vqa{seed}.jsonl"
    proc = run_module("experiments.sample", *common, "--task=vqa", "--num=4", f"--seed={seed}",
                      f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers.append([r["text"] for r in _jsonl(out)])
  assert answers[0] == answers[1]
