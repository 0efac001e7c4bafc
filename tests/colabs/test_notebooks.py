"""The Colab notebooks execute as notebooks (a Jupyter kernel, nbclient), in their
tiny-random-model mode, from the repository as CI has it installed.

Their first cell clones and installs showo2-jax only when it is not importable, so
here (an installed checkout) it does nothing; every other cell runs as a user's
would. The training cell must show the losses; no cell may write to fixed paths
(the tests run in a temporary working directory); links must point at files."""
import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLABS = REPO / "colabs"
NOTEBOOKS = ["inference_demo.ipynb", "convert_and_train.ipynb"]


def _outputs(cell) -> str:
  text = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      text.append(out["text"])
    elif "data" in out:
      text.append(out["data"].get("text/plain", ""))
  return "".join(text)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")   # the `dev` extra; imported here, not at collection
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(COLABS / name, as_version=4)
  # The kernel, and the CLI it starts, import this checkout.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError naming the cell on any failure
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "showo2_jax from" in _outputs(code[0])
  if name == "convert_and_train.ipynb":
    train, table = _outputs(code[-2]), _outputs(code[-1])
    assert "finished at step 60" in train and "Traceback" not in train  # the run's log is shown
    losses = [float(row.split()[1]) for row in table.splitlines()[1:]]
    assert len(losses) >= 5 and losses[-1] < losses[0], table  # NTP falls
  for cell in nb.cells:
    assert "/tmp/" not in "".join(cell.source), "fixed /tmp paths: use tempfile"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_links_point_at_files(name):
  nb = json.loads((COLABS / name).read_text())
  for cell in nb["cells"]:
    for target in re.findall(r"\]\(([^)#]+)\)", "".join(cell["source"])):
      if not target.startswith(("http://", "https://")):
        assert (COLABS / target).exists(), f"{name}: dead link {target}"
