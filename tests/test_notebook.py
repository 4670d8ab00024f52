"""notebooks/sample_colab.ipynb runs top to bottom on CPU (its smoke switch: a tiny model trained in the notebook)."""

from __future__ import annotations

import pytest

from helpers import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_colab_notebook_runs_top_to_bottom(monkeypatch):
    monkeypatch.setenv("ARTV_NOTEBOOK_SMOKE", "1")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    notebook = nbformat.read(REPO / "notebooks" / "sample_colab.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    gifs = [o for o in outputs if o.output_type == "display_data" and "image/gif" in o.get("data", {})]
    assert len(gifs) == 3  # text-to-video, image-to-video, multi-prompt
    assert any("(8, 32, 32, 3)" in o.get("text", "") for o in outputs if o.output_type == "stream")
