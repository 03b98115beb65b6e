"""notebooks/quickstart.ipynb runs top to bottom under a real Jupyter kernel (ipykernel,
driven by nbclient, as Jupyter runs it) and is stored without outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"

# Run before the notebook's cells, in its kernel: the run states its precision instead of
# taking the host's `auto` (whose outcome depends on the CPU), as if this CPU had no bf16
# units, the choice a notebook user on one sees.
SETUP = "import lit_ft.model.precision\nlit_ft.model.precision.cpu_flags = lambda: set()\n"
# Run after them: several processes are refused in a notebook, with what to do instead.
DDP = """
try:
    lit_ft.FineTuner(["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"])
    lit_ft.FineTuner(["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]).train()
except lit_ft.errors.LitFtError as err:
    print("REFUSED:", err)
"""


def _code_cells() -> list[dict]:
    return [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]


def test_notebook_outputs_are_stripped():
    assert all(not c["outputs"] and c["execution_count"] is None for c in _code_cells())


def test_notebook_cell_ids_are_unique():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids)  # nbformat warns on duplicates


def _text(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def test_notebook_runs_under_a_jupyter_kernel(tmp_path):  # ~15 s: a kernel, 150 tiny steps
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SETUP, id="test-setup"))
    notebook.cells.append(nbformat.v4.new_code_cell(DDP, id="test-ddp"))
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on a failure
    cells = {cell.get("id"): cell for cell in notebook.cells}

    train = _text(cells["train"])
    # the progress line redrawn in place: carriage returns, no terminal codes
    ours = [line for line in train.replace("\r", "\n").splitlines() if "[lit_ft]" in line]
    assert "\r[lit_ft] step " in train and not any("\x1b[" in line for line in ours)
    # the permanent step lines keep their figures (tokens/s over the steps since the last)
    assert re.search(r"\[lit_ft\] step 150/150 loss [\d.]+ lr \S+ [\d,]+ tok/s", train), ours
    before, after = map(float, re.search(r"accuracy ([\d.]+) -> ([\d.]+)", train).groups())
    assert after > max(before, 0.6), train[-2000:]
    runs = list((tmp_path / "outputs" / "runs").glob("*/results.json"))
    assert len(runs) == 1
    results = json.loads(runs[0].read_text())
    assert results["metrics"]["after"]["val/acc"] == pytest.approx(after, abs=0.005)

    for plot in ("loss-plot", "metrics-plot"):  # figures shown inline, as PNG
        (shown,) = [o for o in cells[plot].outputs if o.output_type == "execute_result"]
        assert "image/png" in shown.data, shown.data.keys()
    assert "'val/acc'" in _text(cells["evaluate"])
    reloaded = _text(cells["reload"])
    assert "'label': 'function'" in reloaded or "'label': 'import'" in reloaded, reloaded
    refused = _text(cells["test-ddp"])
    assert "REFUSED:" in refused and "cannot start from a notebook" in refused, refused
