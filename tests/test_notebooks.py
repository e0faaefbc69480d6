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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_numbered_table_and_figure_is_glued_and_every_glue_is_placed(path):
    """A `{table}`/`{glue:figure}` directive whose key no code cell glues (or a glued key no directive
    places) is a warning in the strict build; read both sides from the notebook's text."""
    import re
    nb = json.loads(path.read_text())
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    placed = set(re.findall(r"\{glue:(?:md|figure)\} (\S+)", md))
    tables = re.findall(r"````\{table\}[^\n]*\n:name: (\S+)\n\n```\{glue:md\} (\S+)", md)
    # a backtick fence's opening line may not contain a backtick (CommonMark): such a caption silently
    # turns the whole directive into a code block
    assert not re.findall(r"^````\{table\}.*`", md, re.M), path.name
    assert all(name == key for name, key in tables), tables
    glued = set(re.findall(r"""keep_table\(\s*f?["']([^"'{]+)""", code))
    glued |= set(re.findall(r"""(?:\blabel=|placeholder\(|glue\()\s*f?["']([^"'{]+)""", code))
    # slots numbered in a loop: f"tbl-x-{k + 1}" glues tbl-x-1 and tbl-x-2, f"fig-y-{k + 1}-{j + 1}" four
    for stem, rest in re.findall(r"""f["']((?:fig|tbl)-[^"'{]+)\{k \+ 1\}([^"']*)["']""", code):
        for k in (1, 2):
            glued |= {f"{stem}{k}{rest.replace('{j + 1}', str(j))}" for j in (1, 2)}
    glued = {g for g in glued if not g.endswith("-")}
    assert placed == glued, (sorted(placed - glued), sorted(glued - placed))
