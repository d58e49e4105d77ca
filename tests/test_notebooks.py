"""Every notebook in notebooks/ runs top to bottom (nbclient + ipykernel) on the tiny random model with a handful of
examples, selected through the notebooks' DELIFT_NOTEBOOK_* environment variables; and the checked-in notebooks are
exactly what notebooks/build_notebooks.py writes, with outputs cleared."""

import importlib.util
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "instruction_tuning.ipynb", "task_specific.ipynb", "continual.ipynb")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_notebooks_are_built_and_cleared():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert sorted(build.NOTEBOOKS) == sorted(NAMES)
    for name in NAMES:
        notebook = nbformat.read(str(NOTEBOOKS / name), as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: outputs not cleared"
        assert [c.source for c in notebook.cells] == [c.source for c in build.NOTEBOOKS[name]], \
            f"{name} differs from build_notebooks.py: rerun it"
        imports = [line for c in code for line in c.source.splitlines() if line.startswith(("import ", "from "))]
        assert all("delift_jax" not in line or line.startswith("from delift_jax.") for line in imports)


@pytest.mark.slow  # about 15-30 s per notebook on 2 CPU cores
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("DELIFT_NOTEBOOK_MODEL", str(tiny_llama[0]))
    monkeypatch.setenv("DELIFT_NOTEBOOK_EXAMPLES", "6" if name == "quickstart.ipynb" else "10")
    monkeypatch.setenv("DELIFT_NOTEBOOK_MAX_RESPONSE_TOKENS", "8")
    monkeypatch.setenv("DELIFT_NOTEBOOK_TRAIN_STEPS", "2")
    monkeypatch.setenv("DELIFT_NOTEBOOK_MAX_NEW_TOKENS", "3")
    monkeypatch.setenv("DELIFT_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback (each cell has 120 s)

    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2
    pngs = sorted((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    if name != "quickstart.ipynb":
        results = json.loads(next((tmp_path / "out").rglob("results.json")).read_text())
        assert list(results["methods"]) == ["delift", "random"]
        text = "".join(o.get("data", {}).get("text/markdown", "") for c in notebook.cells
                       if c.cell_type == "code" for o in c.outputs)
        assert "| delift |" in text and "## rougeL" in text
