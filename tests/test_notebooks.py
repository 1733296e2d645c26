"""The notebooks run top to bottom (with tiny parameters: the point is that every cell works)."""

from pathlib import Path

import pytest
from helpers import SHARED_DATA

pytestmark = pytest.mark.slow

papermill = pytest.importorskip("papermill", reason="the notebook tests need the test extra (papermill, ipykernel)")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# Each notebook's parameter cell holds its defaults (minutes of training); these make it seconds.
SMALL = {
    "01_toy_2d": {"STEPS": 20, "N_TRAIN": 2048, "N_KL": 2000, "GRID": 40},
    "02_nice_mnist": {
        "WIDTH": 32,
        "DEPTH": 2,
        "MAX_STEPS": 10,
        "VAL_BATCHES": 2,
        "EVAL_IMAGES": 200,
        "SCALE_WIDTH": 16,
        "SCALE_DEPTH": 1,
    },
    "03_glow_fashion": {
        "WIDTH": 8,
        "K": 2,
        "MAX_STEPS": 10,
        "VAL_BATCHES": 2,
        "EVAL_IMAGES": 100,
        "FID_N": 50,
        "INCEPTION_N": 10,
        "CORRUPT_IMAGES": 20,
        "TEMPERATURES": [0.0, 1.0],
    },
}
NEEDS = {"02_nice_mnist": "mnist.npz", "03_glow_fashion": "fashion_mnist.npz"}


def test_every_notebook_is_tested_and_stored_without_outputs():
    import nbformat

    stored = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert stored == sorted(SMALL)
    for name in stored:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), name
        assert "parameters" in code[0].metadata.get("tags", []), (
            f"{name}: the first code cell must be the parameter cell"
        )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path, monkeypatch):
    if name in NEEDS and not (SHARED_DATA / NEEDS[name]).is_file():
        pytest.skip(f"{NEEDS[name]} is not present")
    monkeypatch.setenv("LGM_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
    parameters = {**SMALL[name], "RUN_DIR": str(tmp_path / "runs")}
    executed = papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(tmp_path / f"{name}.ipynb"),
        parameters=parameters,
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    images = [
        output
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{name} showed no figure"
