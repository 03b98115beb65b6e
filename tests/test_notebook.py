"""notebooks/quickstart.ipynb runs top to bottom and is stored without outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _code_cells() -> list[dict]:
    return [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


def test_notebook_outputs_are_stripped():
    assert all(not c["outputs"] and c["execution_count"] is None for c in _code_cells())


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
    # The code cells in order, as one kernel would run them (no Jupyter needed for that).
    # The run states its precision instead of taking the host's `auto` (whose outcome depends
    # on the CPU): as if this CPU had no bf16 units, the choice a notebook user on one sees.
    as_fp32_cpu = (
        "import lit_ft.model.precision\nlit_ft.model.precision.cpu_flags = lambda: set()\n"
    )
    script = as_fp32_cpu + "\n\n".join("".join(c["source"]) for c in _code_cells())
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation perplexity" in result.stdout
    assert (tmp_path / "outputs" / "runs").is_dir()
    assert list((tmp_path / "outputs" / "runs").glob("*/plots/loss.png"))  # shown inline
    assert "step 40: " in result.stdout  # the samples of the last validation


def test_notebook_cell_ids_are_unique():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids)  # nbformat warns on duplicates
