"""Execute the notebooks with nbclient: any cell error fails the test.

Each notebook runs twice: on the shared datasets when they are present, and with
ANOMALY_DATASETS pointing at a missing folder so the built-in fallback data is exercised
too (CI without ../shared still runs every cell). The committed notebooks carry no
outputs, so they render cleanly on GitHub and diff as code.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["fraud_walkthrough.ipynb", "imaging_qa.ipynb"]
BUDGET_S = 180  # the bound for a CPU run, per notebook


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: strip outputs"


@pytest.mark.slow
@pytest.mark.parametrize("data", ["shared", "fallback"])
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_without_errors(name, data, tmp_path, monkeypatch):
    if data == "fallback":
        monkeypatch.setenv("ANOMALY_DATASETS", str(tmp_path / "no-datasets-here"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=BUDGET_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    started = time.monotonic()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_S, f"{name} took {elapsed:.0f} s"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    source_line = text.splitlines()[0] if text else ""
    if data == "fallback":
        assert "synthetic" in source_line, source_line
    elif (NOTEBOOKS.parent.parent / "shared" / "datasets").is_dir():
        assert "synthetic" not in source_line, source_line
    figures = sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    )
    assert figures >= 2, f"{name} drew {figures} figures"
