"""Execute every notebook in notebooks/ top to bottom on the tiny preset, writing under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_notebooks_found():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_long_tail.ipynb",
        "03_sensitivity.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
    """Committed without outputs, so diffs stay readable and no machine paths leak in."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.setenv("EGRA_NB_ROOT", str(root))
    monkeypatch.delenv("EGRA_NB_SWEEP", raising=False)
    # Kernel connection files and IPython's profile also stay under tmp_path.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}
    )
    client.execute()

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # Everything written went under EGRA_NB_ROOT.
    assert (root / "logs" / "notebooks" / path.stem).is_dir()
    assert not (NB_DIR / "logs").exists()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no figure"
