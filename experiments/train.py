r"""Train MDM: ``train`` runs text setup, input, the kernel check, model and state, logging and
the loop (update step, logs, samples, checkpoints), each a short function or section.

  python -m experiments.train --config=digits --workdir=/tmp/mdm_digits
  python -m experiments.train --config=imagenet256 --workdir=gs://... --config.data.data_dir=...
  python -m experiments.train --config=imagenet256 --dry_run     # AOT check, no data, no TPU
  python -m experiments.train --config=imagenet256 --dry_run --topology=v5p-128  # TPU compiler

The same command resumes from the workdir's latest good checkpoint. Resuming compares the config
with the checkpoint's: every difference is logged, and one that changes the run (the network,
objective, optimizer, data; see ``mdm_jax.training.config_drift``) needs
``--allow_config_change``; the batch size never changes on resume. The workdir (local or
``gs://``, every file through etils.epath; ``pip install 'mdm-jax[gcs]'``) holds ``checkpoints/``
(orbax: train state, data iterator state, config), ``metrics.jsonl``, TensorBoard event files
(``tb/``), ``samples/`` and ``tokenizer.model`` (data with text only: data without text, e.g.
imagenet2012, trains class-to-image with no tokenizer).
"""
from __future__ import annotations

import os
import signal
import sys
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from data import tokenizer_record as run_tokenizer
from experiments import allocator
from experiments import configs as config_registry
from experiments import distributed
from mdm_jax import tasks
from mdm_jax.ssm import kernel_check
from mdm_jax.training import checkpoint as ckpt_lib
from mdm_jax.training import metrics_log
from mdm_jax.training import preemption
from mdm_jax.training import run_lock
from mdm_jax.training import sharding
from mdm_jax.training.trainer import Trainer

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when this module runs as a program: absl flags are
  global, so importing ``train`` (the notebook, tests) beside another CLI defines none of
  them (two CLIs' ``--workdir`` would clash)."""
  config_flags.DEFINE_config_file(
      "config", config_registry.resolve("digits"),
      f"Config name ({', '.join(config_registry.NAMES)}) or file; default: digits.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
  flags.DEFINE_bool("dry_run", False, "No data, no training: with --topology, compile the train "
                    "and sampling steps with the TPU compiler for a TPU slice and report memory, "
                    "FLOPs and a roofline; without, count parameters and compile the train step "
                    "on fake CPU devices (--dry_run_devices), then lower it for TPU.")
  flags.DEFINE_integer("dry_run_devices", 64, "Simulated chips for --dry_run.")
  flags.DEFINE_bool("allow_config_change", False, "Resume although the config differs from "
                    "the checkpoint's in a field that changes the run (the network, objective, "
                    "optimizer or data; mdm_jax.training.config_drift has the table). Every "
                    "difference is logged either way.")
  flags.DEFINE_string("topology", None, "With --dry_run: compile with the TPU compiler (libtpu) "
                      "for this TPU slice, e.g. v5p-64 (v4/v5p count TensorCores), v5e-16 (v5e/"
                      "v6e count chips), v5p:4x4x12; a chip alone (v5p) finds the smallest "
                      "slice that fits; `home`: the config's own slice (its `topology` field).")
  flags.DEFINE_integer("kill_at_step", 0, "Testing: SIGKILL this process after this step (and "
                       "after pending checkpoint writes), to simulate preemption.")
  flags.DEFINE_integer("signal_at_step", 0, "Testing: the last process sends itself SIGTERM after "
                       "this step (a preemption notice reaching one host first).")
  flags.DEFINE_enum("distributed", "auto", ["auto", "yes", "no"],
                    "Call jax.distributed.initialize() (auto: when a multi-host environment is "
                    "detected).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator, for "
                      "clusters jax does not detect (default: $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", None, "Processes of the run, with --coordinator_address "
                       "(default: $JAX_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) "
                       "(default: $JAX_PROCESS_ID).")


# ----------------------------------------------------------------------------- samples
def write_samples(trainer: Trainer, state, tokenizer, eval_examples, outdir: str, tag: str):
  """Class-conditional grid, joint grid + captions, captions and VQA answers on held-out data
  (a clip model's grids are animated GIFs).

  Every process runs the (global) sampling; process 0 writes the files and returns their paths.
  """
  from experiments import sample_io
  mc, config = trainer.model_cfg, trainer.config
  trained = tasks.trained_tasks(config.loss.task_weights,
                                trainer.data_keys if tokenizer is not None else ())
  rng = jax.random.PRNGKey(config.seed + 1)
  num = config.sample.num
  is_main = jax.process_index() == 0
  written = []
  if "class2img" in trained:
    labels = jnp.arange(num) % mc.num_classes
    images, _ = trainer.sample(state, "class2img", rng, num, labels=labels)
    if is_main:
      written.append(sample_io.save_visual_grid(images, f"{outdir}/class2img_{tag}",
                                                nrow=min(mc.num_classes, num), upscale=4))
  if "joint" in trained:
    images, tokens = trainer.sample(state, "joint", rng, num)
    if is_main:
      written.append(sample_io.save_visual_grid(images, f"{outdir}/joint_{tag}", upscale=4))
      written.append(sample_io.save_text(
          f"{outdir}/joint_{tag}.txt",
          "".join(f"{i}: {tokenizer.decode(t)}\n" for i, t in enumerate(tokens))))
  if eval_examples and "caption" in trained:
    ex = eval_examples[:num]
    images = jnp.asarray(np.stack([e["image"] for e in ex]))
    _, tokens = trainer.sample(state, "caption", rng, len(ex), images=images)
    if is_main:
      written.append(sample_io.save_text(
          f"{outdir}/captions_{tag}.txt",
          "".join(f"{e['index']} (label {e['label']}): {tokenizer.decode(t)}\n"
                  for e, t in zip(ex, tokens))))
  return written


def _log_grids(metrics: metrics_log.MetricsLog, step: int, tag: str, written) -> None:
  """Each sample grid ``write_samples`` wrote (``class2img_{tag}.png``, a clip model's
  ``joint_{tag}.gif``, ...) to TensorBoard as image ``samples/class2img`` etc. at ``step``."""
  for path in written:
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext in (".png", ".gif"):
      metrics.write_image_file(step, f"samples/{stem.removesuffix('_' + tag)}", path)


# ----------------------------------------------------------------------------- main
def _quiet_library_info_logs():
  """Orbax logs every checkpoint phase at INFO; keep the console for training progress."""
  import logging as py_logging

  class DropInfoFrom(py_logging.Filter):
    def filter(self, record):
      return record.levelno > py_logging.INFO or "orbax" not in record.pathname

  logging.get_absl_handler().addFilter(DropInfoFrom())


def main(argv):
  del argv
  _quiet_library_info_logs()
  config = FLAGS.config
  if FLAGS.dry_run:
    from experiments import compile_report  # pylint: disable=g-import-not-at-top
    name = os.path.basename(config_flags.get_config_filename(FLAGS["config"])).split(".")[0]
    sys.exit(compile_report.main(config, topology=FLAGS.topology, devices=FLAGS.dry_run_devices,
                                 config_name=name))
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required (it holds checkpoints, metrics and samples)")
  distributed.maybe_initialize(FLAGS.distributed, FLAGS.coordinator_address,
                              FLAGS.num_processes, FLAGS.process_id)
  try:
    train(config, FLAGS.workdir, kill_at_step=FLAGS.kill_at_step,
          signal_at_step=FLAGS.signal_at_step, allow_config_change=FLAGS.allow_config_change)
  except ckpt_lib.CheckpointWriteError as e:  # the report is the message: no traceback
    logging.error("%s", e)
    sys.exit(1)


def _kill_every_process():
  """``--kill_at_step``: every process SIGKILLs itself, the coordinator (process 0) last. A
  process that outlives the coordinator's jax.distributed service aborts on its own (SIGABRT)
  instead of dying by the kill the test expects, so all first meet at a barrier, then the
  others die while the coordinator waits a moment."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("kill_at_step")
    if jax.process_index() == 0:
      time.sleep(3.0)
  os.kill(os.getpid(), signal.SIGKILL)


def train(config, workdir: str, *, kill_at_step: int = 0, signal_at_step: int = 0, on_log=None,
          allow_config_change: bool = False):
  """Trains ``config`` in ``workdir``, resuming from its latest good checkpoint, then writes the
  final samples: the command's work, callable in-process (the notebook does).

  SIGTERM or SIGINT (a preemption notice; Ctrl-C) stops it after the step in progress, which is
  checkpointed with the data position, and it returns without the final samples; every process
  of a multi-host run stops at the same step (see ``mdm_jax.training.preemption``).

  Args:
    kill_at_step: testing: SIGKILL this process after that step (see --kill_at_step).
    signal_at_step: testing: SIGTERM the last process after that step (see --signal_at_step).
    on_log: called on process 0 with each logged step's record (metrics.jsonl's fields and
      ``eta_s``), e.g. to show progress.
    allow_config_change: resume although the config changes the run (see --allow_config_change).

  Returns:
    (trainer, final train state, tokenizer).
  """
  from etils import epath
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  config_registry.check_run_values(config)
  # One trainer per workdir (process 0 holds the lock for the whole run).
  with run_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0), \
      preemption.PreemptionWatch() as watch:
    return _train(config, workdir, kill_at_step=kill_at_step, signal_at_step=signal_at_step,
                  on_log=on_log, watch=watch, allow_config_change=allow_config_change)


def itstime(step: int, every: int, total: int, *, first: int | None = None) -> bool:
  """Whether a periodic action (log, checkpoint, sample) runs after ``step``: every ``every``
  steps and at the last one (and at ``first``, e.g. the first step after a resume). ``every``
  0 means never (apart from the last and first steps)."""
  return bool(every and step % every == 0) or step == total or step == first


def check_resume(config, workdir: str, *, allow_change: bool):
  """Before anything is built: the newest checkpoint's (step, assets record), or None on a fresh
  start, after comparing the config it was saved with to ``config``
  (``mdm_jax.training.config_drift``): every difference is logged, one that changes the run
  needs ``allow_change``, and a batch size change is refused."""
  import ml_collections
  from etils import epath
  from mdm_jax import run_io
  from mdm_jax.training import config_drift
  if not (epath.Path(workdir) / "checkpoints").is_dir():
    return None
  reader = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    step = reader.latest_step()
    if step is None:
      return None
    saved, recorded = reader.restore_config(), reader.restore_assets(step)
  finally:
    reader.close()
  if saved is not None:
    saved = run_io.upgrade_saved_config(ml_collections.ConfigDict(saved))
    for change in config_drift.check(saved, config, allow=allow_change,
                                     where=f"checkpoint {step} of {workdir}"):
      if change.kind == config_drift.SETTING:
        logging.info("Resuming with a changed setting: %s", change)
      else:
        logging.warning("Resuming with a changed config (--allow_config_change): %s", change)
  return step, recorded


def setup_text(config, workdir: str, info: dict, resume=None):
  """The run's tokenizer and the model's vocabulary size. On a fresh start it is loaded from
  the workdir, or trained once on the data's text and saved there by process 0; on resume
  (``resume``: ``check_resume``'s (step, assets record)) the workdir's file must be the one the
  checkpoint recorded, and a missing one is an error, never trained again. Data without text (e.g.
  ImageNet's synset labels) has no tokenizer: text positions stay absent, class2img alone
  trains, and the text side keeps ``data.vocab_size`` ids (never fed)."""
  from data import pipeline, tokenizer as tokenizer_lib
  from etils import epath
  from experiments import workdir as workdir_lib
  dc = config.data
  if not info["has_caption"]:
    text_tasks = [f"{t} ({w:g})" for t, w in zip(tasks.TASKS, config.loss.task_weights)
                  if t not in tasks.servable(()) and w > 0]
    if "class2img" not in tasks.trained_tasks(config.loss.task_weights, ()):
      raise ValueError(f"Dataset {dc.name!r} has no text, so only class2img can train, but its "
                       "loss.task_weights gives class2img weight 0; set --config.loss."
                       "task_weights='(1.0, 0.0, 0.0, 0.0, 0.0, 0.0)'.")
    logging.info("%s has no text: no tokenizer, class2img only%s", dc.name,
                 f"; skipping the text tasks {', '.join(text_tasks)}" if text_tasks else "")
    return None, dc.vocab_size
  tok_path = epath.Path(workdir) / workdir_lib.TOKENIZER_FILE
  if resume is not None:
    step, recorded = resume
    tokenizer = run_tokenizer.open_tokenizer(tok_path, recorded,
                                             where=f"checkpoint {step} of {workdir}")
  elif tok_path.exists():
    tokenizer = tokenizer_lib.Tokenizer.load(tok_path)
  else:
    corpus = pipeline.text_corpus(dc.name, data_dir=dc.data_dir)
    tokenizer = tokenizer_lib.Tokenizer.train(
        corpus, tok_path if jax.process_index() == 0 else None, dc.vocab_size)
  return tokenizer, tokenizer.vocab_size


def setup_input(config, tokenizer):
  """This host's training iterator (its slice of every global batch) and the held-out
  examples the periodic and final samples use."""
  from data import pipeline
  dc = config.data
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} must divide over {jax.process_count()} hosts")
  train_iter = pipeline.make_dataset(
      dc.name, split="train", batch_size=config.batch_size // jax.process_count(),
      image_size=dc.image_size, channels=dc.channels, max_text_len=dc.max_text_len,
      tokenizer=tokenizer, seed=config.seed, frames=config.model.frames,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(), data_dir=dc.data_dir, worker_count=dc.worker_count)
  try:
    eval_examples = pipeline.eval_examples(
        dc.name, split=pipeline.heldout_split(dc.name), num=config.sample.num,
        image_size=dc.image_size, channels=dc.channels, data_dir=dc.data_dir,
        frames=config.model.frames)
  except Exception as e:  # a dataset without a held-out split still trains
    logging.warning("No held-out examples for samples (%s)", e)
    eval_examples = []
  return train_iter, eval_examples


def check_ssd_kernel(config) -> None:
  """An unmeasured accelerator must not give silently wrong numbers: when the model would run
  the Pallas SSD kernel, it is checked against ``xla`` on one small input first, and
  ``model.ssd_impl`` falls back to ``xla`` (with a warning) if they differ."""
  if config.model.backbone != "mamba2":
    return
  mc = config.model
  impl, _, warning = kernel_check.checked_impl(
      mc.ssd_impl, target=mc.get("pallas_target", "auto"), chunk_size=mc.chunk_size,
      headdim=mc.headdim, d_state=mc.d_state, ngroups=mc.ngroups, dtype=mc.dtype)
  if warning:
    logging.warning("%s", warning)
  config.model.ssd_impl = impl


def _train(config, workdir: str, *, kill_at_step: int, signal_at_step: int, on_log,
           watch: preemption.PreemptionWatch, allow_config_change: bool):
  from data import pipeline
  from etils import epath
  from experiments import workdir as workdir_lib
  logging.info("Config:\n%s", config)
  resume = check_resume(config, workdir, allow_change=allow_config_change)
  info = pipeline.describe(config.data.name, data_dir=config.data.data_dir)
  tokenizer, vocab_size = setup_text(config, workdir, info, resume)
  data_keys = tuple(k for k, has in (("caption", info["has_caption"]), ("vqa", info["has_vqa"]))
                    if has)

  mesh = sharding.make_mesh(**dict(config.mesh))
  logging.info("Mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  train_iter, eval_examples = setup_input(config, tokenizer)
  check_ssd_kernel(config)

  # --- Model, train state and the sharded update step ---------------------------------------
  trainer = Trainer(config, mesh, vocab_size=vocab_size,
                    num_classes=max(info["num_classes"], 1), data_keys=data_keys)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                       assets=run_tokenizer.record(tokenizer))
  restored = checkpointer.restore_latest(trainer.abstract_state, data_iter=train_iter)
  if restored is not None and tokenizer is not None and resume and restored[1] != resume[0]:
    run_tokenizer.verify(tokenizer, epath.Path(workdir) / workdir_lib.TOKENIZER_FILE,
                         checkpointer.restore_assets(restored[1]),
                         where=f"checkpoint {restored[1]} of {workdir}")
  if restored is None:
    state, start = trainer.init_state(), 0
    logging.info("Started from scratch")
  else:
    state, start = restored
    logging.info("Resumed from the checkpoint at step %d", start)
  logging.info("Model: %s backbone, %d blocks, %.2fM parameters", trainer.model_cfg.backbone,
               trainer.model_cfg.n_layers, trainer.num_params / 1e6)

  # --- Logging (process 0 writes) ------------------------------------------------------------
  is_main = jax.process_index() == 0
  metrics = metrics_log.MetricsLog(
      workdir, start_step=start, enabled=is_main,
      tensorboard_dir=workdir_lib.tensorboard_dir(workdir) if is_main else None)
  samples_dir = os.fspath(epath.Path(workdir) / "samples")

  # --- Training loop -------------------------------------------------------------------------
  # A save digests the state (a compiled pass): compile it now, not in the ~30 s a preemption
  # notice leaves (seconds on a CPU host; more for a large model).
  ckpt_lib.state_digests(state)
  total = config.total_steps
  t_last, step_last = time.time(), start
  t_start = time.time()
  # The host waits for step n - 1 once step n is dispatched: the device always has the next step
  # queued, and the host is never more than one step ahead. Unbounded, asynchronous dispatch
  # queued 32 steps on a CPU host (everything up to the next logged step), all of which had to
  # run before a preemption's checkpoint: 51 s from the notice instead of about two steps.
  in_flight = None
  try:
    for step in range(start + 1, total + 1):
      batch = sharding.shard_batch(next(train_iter), mesh, trainer.rules)
      with trainer.mesh_context():
        state, terms = trainer.train_step(state, batch)
      if in_flight is not None:
        jax.block_until_ready(in_flight)
      in_flight = terms["loss"]
      checkpointer.check()  # a failed asynchronous save (disk full) stops the run when it fails
      if itstime(step, config.log_every, total, first=start + 1):
        terms = {k: float(v) for k, v in jax.device_get(terms).items()}
        ckpt_lib.check_finite(step, terms)
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        eta = (total - step) / max(rate, 1e-9)
        if is_main:
          record = {**terms, "steps_per_s": rate}
          metrics.write(step, record)
          logging.info("step %d/%d | loss %.4f | img %.4f | txt %.4f | rec %.4f/%.4f | "
                       "%.2f steps/s | ETA %.0fs", step, total, terms["loss"], terms["diff_img"],
                       terms["diff_txt"], terms["rec_img"], terms["rec_txt"], rate, eta)
          if on_log:
            on_log(dict(record, step=step, eta_s=eta))
      preemption.send_notice_at(step, signal_at_step)
      preempted = watch.reached(step - start)  # on every process at the same step
      if (config.sample_every and step % config.sample_every == 0 and step != total
          and not preempted):
        _log_grids(metrics, step, f"step{step}",
                   write_samples(trainer, state, tokenizer, eval_examples, samples_dir,
                                 f"step{step}"))
      if itstime(step, config.checkpoint_every, total) or preempted:
        # NaN guard: a step whose loss is not finite is never checkpointed (and save itself
        # refuses a state with a non-finite leaf).
        ckpt_lib.check_finite(step, {k: float(v) for k, v in jax.device_get(terms).items()})
        checkpointer.save(step, state, data_iter=train_iter, config_dict=config.to_dict())
      if preempted:
        checkpointer.wait()
        logging.warning("Preempted (%s): saved the checkpoint of step %d and stopped, %.1fs after "
                        "the notice; the same command resumes from it.", watch.signal_name, step,
                        watch.seconds())
        return trainer, state, tokenizer
      if kill_at_step and step == kill_at_step:
        checkpointer.wait()
        _kill_every_process()
    checkpointer.wait()
    logging.info("Training done in %.0fs; writing final samples", time.time() - t_start)
    written = write_samples(trainer, state, tokenizer, eval_examples, samples_dir, "final")
    for path in written:
      logging.info("Wrote %s", path)
    _log_grids(metrics, total, "final", written)
  finally:  # on any exit: in-flight checkpoint writes finish, logs are closed
    checkpointer.close()
    metrics.close()
  return trainer, state, tokenizer

if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()  # XLA:CPU's steps, up to a third faster
  # Before DEFINE_config_file, which already applies sys.argv's overrides to the default config:
  # names become paths and unknown override fields get a clear error.
  sys.argv = config_registry.rewrite_argv(sys.argv)
  define_flags()
  app.run(main)
