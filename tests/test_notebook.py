"""notebooks/train_gguf_model.ipynb runs top to bottom (nbclient) on a tiny model, training into
temporary folders, and is committed without outputs. Needs the `dev` extra's nbclient, nbformat and
ipykernel; skipped with the reason when they are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dndllama import registry
from tiny_models import make_tiny_model

REPO = Path(__file__).parent.parent
NOTEBOOK = REPO / "notebooks" / "train_gguf_model.ipynb"
DATA = Path(__file__).parent / "data" / "independent"
NEEDED = ("nbformat", "nbclient", "ipykernel")


def _missing() -> list[str]:
    import importlib.util

    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


needs_jupyter = pytest.mark.skipif(bool(_missing()), reason=f"{', '.join(_missing())} not installed: "
                                   "pip install -e '.[dev]' (nbclient, nbformat, ipykernel) to run the notebook")


def test_the_committed_notebook_has_no_outputs():
    import json

    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code), \
        "clear the notebook's outputs before committing it (Kernel > Restart & Clear Output)"


@needs_jupyter
def test_the_notebook_trains_a_tiny_model_top_to_bottom(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    # 6 layers: the app's May-2025 llama.cpp (checked when installed) crashes on gemma3 models with fewer
    base = make_tiny_model(tmp_path / "tiny.gguf", n_ctx=4096, n_layer=6)
    models = tmp_path / "models"
    for name, value in {"DATA": data, "BASE": base, "MAX_STEPS": 2, "CTX": 2048, "MODELS": models,
                        "CACHE": tmp_path / "cache", "THREADS": 2, "VALIDATION_TURNS": 1, "GATE": 0}.items():
        monkeypatch.setenv(f"DNDLLAMA_NB_{name}", str(value))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()     # raises CellExecutionError naming the cell that failed

    version = registry.current(models)
    assert version is not None and version.name == "v0001" and version.model.is_file()
    outputs = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                        for output in cell.outputs)
    assert "v0001 is current" in outputs and "DM: " in outputs
    assert not [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
                if o.output_type == "error"]
