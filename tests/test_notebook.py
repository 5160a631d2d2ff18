"""The Colab TPU quickstart notebook executes top to bottom on CPU with the tiny config."""
import os
import sys
import types

import nbformat
from nbclient import NotebookClient
import pytest

import subproc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "notebooks", "colab_tpu_quickstart.ipynb")


def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
  monkeypatch.setenv("MDM_NOTEBOOK_CONFIG", "tiny")
  monkeypatch.setenv("MDM_NOTEBOOK_WORKDIR", str(tmp_path / "wd"))
  # The kernel is a process like the CLI subprocesses: one CPU device, their XLA_FLAGS (part of
  # the compilation cache's key), so it reads back the tiny run's programs they compiled.
  cli_env = subproc.env()
  for name in ("JAX_PLATFORMS", "XLA_FLAGS"):
    monkeypatch.setenv(name, cli_env[name])
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=subproc.HANG_TIMEOUT_S, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  # Trained in the kernel's own process, with a progress line per logged step (tiny: 6 steps).
  printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  progress = [l for l in printed.splitlines() if l.startswith("step ")]
  assert [l.split("|")[0].split()[1] for l in progress] == [f"{s}/6" for s in range(1, 7)]
  assert all("loss" in l and "steps/s" in l and "ETA" in l for l in progress)
  assert "subprocess" not in nb.cells[3].source
  # It samples through the Python API, not by hand (no tokenizing or trainer.sample calls).
  code = "".join(c.source for c in nb.cells if c.cell_type == "code")
  assert "mdm_jax.load(WORKDIR)" in code
  assert not [w for w in ("trainer.sample", "encode_padded", "encode_vqa", "tok.") if w in code]
  # The sample grids were displayed inline as images.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 4
  assert sorted(os.listdir(tmp_path / "wd" / "checkpoints")) == ["3", "6"]
  assert (tmp_path / "wd" / "samples" / "class2img_final.png").exists()


def test_colab_setup_asks_for_the_repository_url(tmp_path, monkeypatch):
  """On Colab, with REPO_URL left empty, the first cell stops with a message naming it (before
  any clone or install)."""
  setup = nbformat.read(NOTEBOOK, as_version=4).cells[1].source
  assert setup.startswith('REPO_URL = ""')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  with pytest.raises(ValueError, match="REPO_URL is empty: set it at the top of this cell"):
    exec(compile(setup, "setup_cell", "exec"), {})
  assert os.listdir(tmp_path) == []
