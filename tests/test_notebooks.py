"""Notebooks run top to bottom against a real run's results."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from w2s_lightning import pipeline

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
def test_explore_run_notebook_executes(make_cfg, tiny_overrides, monkeypatch):
    cfg = make_cfg(*tiny_overrides)
    pipeline.run(cfg)
    monkeypatch.setenv("W2S_RESULTS", str(Path(cfg.paths.output_dir) / "results.json"))
    notebook = nbformat.read(NOTEBOOKS / "explore_run.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    printed = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "tiny-bert -> tiny-llama" in printed
    assert "transfer agrees with the weak model on" in printed
