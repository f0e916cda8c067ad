"""Every notebook in notebooks/ runs top to bottom (small settings) and is committed without outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist():
    names = {path.stem for path in NOTEBOOKS}
    assert {"01_surrogate_pricing", "02_calibration", "03_deep_hedging"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def test_default_output_folder_is_git_ignored():
    """Run in Jupyter, the notebooks write datasets, runs and figures to notebook_output/; they
    showed in ``git status`` as files to commit."""
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "notebooks/notebook_output/heston_data/metadata.json"],
        cwd=root,
        check=False,
    )
    assert ignored.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("QFNET_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("QFNET_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    assert os.listdir(tmp_path), "the notebook should write its figures to QFNET_NOTEBOOK_OUT"
    # a reader sees stderr as noise or alarm (the dataset cell printed a TqdmWarning and a
    # text progress bar where ipywidgets is not installed)
    stderr = [
        (i, output["text"][:200])
        for i, cell in enumerate(notebook.cells)
        for output in cell.get("outputs", [])
        if output.get("name") == "stderr"
    ]
    assert not stderr, f"{path.name} writes to stderr (cell index, text): {stderr}"
