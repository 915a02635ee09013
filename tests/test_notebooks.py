"""The notebooks run top to bottom, so they cannot rot."""

import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=3600,  # per cell: generous, so a loaded machine does not fail it
                   kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot and the drawn boxes
    if path.name == "quickstart.ipynb":  # the reward rises where a new user can see it
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        figures = ast.literal_eval(text[text.index("{'total reward"):].split("}")[0] + "}")
        assert figures["last 10 steps"] > figures["total reward, first 10 steps"] + 0.1, figures
