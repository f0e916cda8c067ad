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

# Run after a notebook's last cell, in its kernel: what its outputs claim, checked (a notebook
# that printed "mean nan bp", or a calibration stuck far from the published fit, ran and passed).
# Deterministic quantities only (the seeded generator and fits), with bounds from the documented
# targets, not frozen outputs.
CHECKS = {
    "01_surrogate_pricing": """
import math
assert summary["test"]["n"] > 0 and all(math.isfinite(v) for v in summary["test"].values())
assert int(err_bp.isnan().sum()) < err_bp.numel() // 100, "the analytic reference went NaN"
# the shipped surrogate's documented targets (README, bench_surrogate): mean 0.5, p99 3, max 15 bp
assert float(err_bp.nanmean()) < 0.5, float(err_bp.nanmean())
assert float(err_bp.flatten().nanquantile(0.99)) < 3.0
assert float(err_bp[~err_bp.isnan()].max()) < 15.0
""",
    "02_calibration": """
heston_fit = fits["direct"]
# the published fit of the full surface has SSE 177.2; a fit stuck in a local minimum is far above
assert heston_fit.converged and heston_fit.sse < 200.0, heston_fit.sse
if "quantlib" in fits:  # the same optimum as QuantLib's calibrator
    assert abs(fits["quantlib"].sse - heston_fit.sse) < 1e-3 * heston_fit.sse
# a SABR smile per expiry has more freedom than one Heston surface
assert sabr.n_quotes == len(quotes) and sabr.rmse_iv_bp < heston_fit.rmse_iv_bp
""",
    "03_deep_hedging": """
import math
expected = {"learned", "delta", "no_hedge", "whalley_wilmott", "heston_delta"}
assert set(report["strategies"]) == expected, report["strategies"]
assert report["n_paths"] == config.paths.test
for name in expected:
    assert all(math.isfinite(report[name][k]) for k in ("mean", "std", "es95", "es99")), name
# any hedge has a far smaller tail than none (ES95 about 0.036 against 0.11 per unit spot)
for name in expected - {"no_hedge"}:
    assert report[name]["es95"] < 0.5 * report["no_hedge"]["es95"], name
""",
}


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
    if path.stem in CHECKS:
        notebook.cells.append(nbformat.v4.new_code_cell(CHECKS[path.stem]))
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
