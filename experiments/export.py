r"""Export what generation needs from a training workdir: the EMA parameters alone.

  python -m experiments.export --workdir=/tmp/mdm_digits --out=/tmp/mdm_digits_export

``--out`` gets (local or any ``etils.epath`` path):
  checkpoints/<step>/   an orbax checkpoint of ``ema``, ``latent_stats`` and ``step`` (no
                        optimizer state, no training parameters), with its config and digests;
  ema.safetensors       the same arrays as named tensors ("ema/<module>/<param>", ...), when
                        the ``safetensors`` package is installed;
  config.json           the run's config;  run_info.json  what its data offers (classes, text)
                        and the tokenizer's digest (checked when the export is opened);
  tokenizer.model       the run's tokenizer, when it has text.

``mdm_jax.load(out)`` and ``experiments.sample --workdir=out`` open it like a workdir; with the
``checkpoints/`` folder removed they read ``ema.safetensors``.
"""
from __future__ import annotations

import json

from absl import app, flags
from etils import epath

from experiments import distributed
from mdm_jax import run_io
from mdm_jax.training import checkpoint as ckpt_lib
from data import tokenizer_record as run_tokenizer

FLAGS = flags.FLAGS
def define_flags():
  """Defined only when run as a program (absl flags are global; see experiments.train)."""
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_string("out", None, "Folder to write the export to (new or empty).",
                      required=True)


def export(workdir, out) -> dict:
  """Writes the export of ``workdir`` to ``out``; returns {"step", "files"}."""
  out = epath.Path(out)
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f"{out} is not empty: export into a new folder")
  run = run_io.open_run(workdir)       # EMA parameters, latent statistics and step only
  assets = run_tokenizer.record(run.tokenizer)   # the tokenizer was checked against the run's
  saver = ckpt_lib.Checkpointer(out, max_to_keep=None, async_save=False, assets=assets)
  saver.save(run.step, run.state, config_dict=run.config, force=True)
  saver.close()
  (out / run_io.CONFIG_FILE).write_text(json.dumps(run.config.to_dict(), indent=1))
  (out / run_io.INFO_FILE).write_text(json.dumps({**run.info, "assets": assets}, indent=1))
  if run.tokenizer is not None:
    run.tokenizer.save(out / run_io.TOKENIZER_FILE)
  try:
    import safetensors  # noqa: F401  pylint: disable=unused-import
    run_io.write_safetensors(out / run_io.SAFETENSORS_FILE, run.state)
  except ImportError:
    print("safetensors is not installed: wrote the orbax checkpoint only")
  return {"step": run.step, "files": sorted(p.name for p in out.iterdir())}


def main(argv):
  del argv
  distributed.maybe_initialize("auto")
  distributed.refuse_multiple_processes("experiments.export")
  result = export(FLAGS.workdir, FLAGS.out)
  print(f"exported step {result['step']} of {FLAGS.workdir} to {FLAGS.out}: {result['files']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
