"""The Colab TPU quickstart notebook executes top to bottom on CPU with the tiny config."""
import os

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "notebooks", "colab_tpu_quickstart.ipynb")


def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
  monkeypatch.setenv("MDM_NOTEBOOK_CONFIG", "tiny")
  monkeypatch.setenv("MDM_NOTEBOOK_WORKDIR", str(tmp_path / "wd"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  # The sample grids were displayed inline as images.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 4
  assert (tmp_path / "wd" / "checkpoints").is_dir()
