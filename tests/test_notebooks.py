"""The committed notebooks: no outputs, a `parameters` cell defaulting to the cpu profile, all in the TOC."""
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "book").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_defaults_to_cpu(path):
    nb = json.loads(path.read_text())
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    scope = {}
    exec("".join(params[0]["source"]), scope)
    assert scope["profile"] == "cpu"  # the committed tier; make test runs ci
    assert any("NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in nb["cells"]), \
        f"{path.name}: at least one cell checked by nbval"


def test_toc_lists_every_chapter():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = {c["file"] for part in toc["parts"] for c in part["chapters"]}
    assert {f"book/{p.stem}" for p in NOTEBOOKS} <= files
    assert toc["root"] == "book/intro" and (REPO / "book" / "intro.md").exists()
