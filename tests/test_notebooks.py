"""notebooks/: stored without outputs, import kmask and define no model code, and run top to
bottom (nbclient) with their tiny settings in a fresh folder, in order (01 trains the
stand-in run that 03 and 04 reuse)."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = [
    "01_inference",
    "02_train_custom_dataset",
    "03_transfer_learning",
    "04_export_and_serve",
]


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]


def test_notebooks_are_stored_without_outputs():
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        for index, cell in enumerate(_cells(name)):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{name} cell {index} has outputs: strip them"
                assert cell["execution_count"] is None, f"{name} cell {index}: execution count"


def test_notebooks_import_kmask_and_define_no_model_code():
    for name in NAMES:
        code = "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "code")
        assert "import kmask" in code, name
        lines = [line.strip() for line in code.splitlines()]
        assert not [line for line in lines if line.startswith("class ")], name
        assert "keras.layers.Layer" not in code and "keras.Model)" not in code, name


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow  # about 1-4 minutes each on 2 cores
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, workdir, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    for variable in ("KMASK_RUN", "KMASK_IMAGE", "KMASK_TRAIN_JSON", "KMASK_TRAIN_IMAGES"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    assert os.listdir(workdir)
