"""Every notebook in notebooks/ executes top to bottom without an error (nbclient, kernel python3)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from conftest import MISSING

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300

# Notebooks that must exist; every notebook must start with a markdown cell (what it shows and why) and plot at
# least one PNG image.
MUST_PLOT = {
    "01_kernels.ipynb",
    "02_ops.ipynb",
    "03_observability.ipynb",
    "04_backup.ipynb",
    "05_scale_out.ipynb",
}
# Packages a notebook needs beyond the Jupyter stack and matplotlib (in the [test] extra: missing, it skips locally
# and fails under CI).
NEEDS = {"05_scale_out.ipynb": ("dask", "distributed")}
# The notebooks are committed without outputs; a saved cell source beyond this many characters is a sign of
# pasted data.
MAX_SOURCE_CHARS = 20_000


def _jupyter_modules():
    """nbclient, nbformat; skips the test when the Jupyter execution stack is not installed."""
    try:
        with warnings.catch_warnings():
            # jupyter_core warns about its platformdirs migration on import; that is not our concern here
            warnings.simplefilter("ignore", DeprecationWarning)
            import ipykernel  # noqa: F401  (the python3 kernel the notebooks run on)
            import nbclient
            import nbformat
    except ImportError as exc:
        pytest.skip(f"{MISSING}executing notebooks needs nbclient, nbformat and ipykernel: {exc}")
    return nbclient, nbformat


def test_notebooks_exist() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert MUST_PLOT <= names, f"missing notebooks: {sorted(MUST_PLOT - names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_starts_with_what_and_why(path: Path) -> None:
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells and cells[0]["cell_type"] == "markdown", f"{path.name} does not start with a markdown cell"
    first = "".join(cells[0]["source"])
    assert first.lstrip().startswith("# "), f"{path.name}: the first cell has no title"
    assert len(first) > 200, f"{path.name}: the first cell should say what the notebook shows and why"
    for i, cell in enumerate(cells):
        assert len("".join(cell["source"])) <= MAX_SOURCE_CHARS, f"{path.name}: cell {i} is too large"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path) -> None:
    nbclient, nbformat = _jupyter_modules()
    for module in NEEDS.get(path.name, ()):
        pytest.importorskip(module, reason=f"{MISSING}{path.name} needs {module} (pip install -e '.[test]')")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name} is saved with outputs; clear them before committing"

    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},  # run in a scratch working directory
    )
    with warnings.catch_warnings():
        # jupyter_client/zmq deprecations inside the runner are not failures of the notebook
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as exc:
            pytest.fail(f"{path.name}: a cell raised\n{exc}")

    errors = [
        (i, out)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, (
        f"{path.name}: cell {errors[0][0]} raised {errors[0][1].get('ename')}: {errors[0][1].get('evalue')}"
    )

    pngs = [  # every notebook shows at least one plot
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert pngs, f"{path.name} produced no image/png output"
