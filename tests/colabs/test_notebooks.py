"""The Colab notebooks run end to end (in their tiny-random-model mode).

Code cells are executed in order in one namespace; shell lines (`!pip ...`) and
magics are skipped, as they set up a fresh Colab runtime.
"""
import json
from pathlib import Path

import pytest

COLABS = Path(__file__).resolve().parents[2] / "colabs"


def code_cells(path):
  nb = json.loads(path.read_text())
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      src = "".join(cell["source"])
      yield "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("!", "%")))


@pytest.mark.parametrize("name", ["inference_demo.ipynb", "convert_and_train.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__colab__", "display": lambda *a, **k: None}
  for i, src in enumerate(code_cells(COLABS / name)):
    try:
      exec(compile(src, f"{name}[cell {i}]", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:  # noqa: BLE001
      raise AssertionError(f"{name}, code cell {i} failed: {e!r}\n{src}") from e
