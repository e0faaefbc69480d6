"""The book as a published, citable artefact: Pages workflow, CITATION.cff, licences.

Mostly standard library and PyYAML: they read files; two build a one-page book with jupyter-book.
"""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _load(path):
    return yaml.safe_load((ROOT / path).read_text())


def _uses(step, action):
    return str(step.get("uses", "")).split("@")[0] == action


def _workflow():
    wf = _load(".github/workflows/book.yml")
    assert isinstance(wf, dict)
    return wf


def test_workflow_builds_the_book_on_push_to_main_and_deploys_it_to_pages():
    wf = _workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1: a bare `on` key loads as True
    assert isinstance(triggers, dict), triggers
    assert "main" in triggers["push"]["branches"]

    jobs = wf["jobs"]
    builders = [name for name, job in jobs.items()
                if any("make book" in step.get("run", "") for step in job["steps"])]
    assert len(builders) == 1, builders
    build = jobs[builders[0]]
    uploads = [s for s in build["steps"] if _uses(s, "actions/upload-pages-artifact")]
    assert [s.get("with", {}).get("path") for s in uploads] == ["_build/html"]

    deployers = [job for job in jobs.values()
                 if any(_uses(s, "actions/deploy-pages") for s in job["steps"])]
    assert len(deployers) == 1
    deploy = deployers[0]
    needs = deploy.get("needs", [])
    assert builders[0] in ([needs] if isinstance(needs, str) else needs)
    assert deploy["permissions"].get("pages") == "write"
    assert deploy["permissions"].get("id-token") == "write"


def _bib_title(key):
    bib = (ROOT / "references.bib").read_text()
    entry = re.search(r"@\w+\{" + re.escape(key) + r",(.*?)\n\}", bib, re.S).group(1)
    title = re.search(r"title\s*=\s*\{(.*)\},?\s*$", entry, re.M).group(1)
    return title.replace("{", "").replace("}", "")


def test_citation_cff_cites_the_software_and_references_the_paper():
    cff = _load("CITATION.cff")
    assert str(cff["cff-version"]).startswith("1.2")
    assert cff["title"].strip()
    assert cff["authors"] and all(a.get("name") or a.get("family-names") for a in cff["authors"])
    assert cff["license"] == "MIT"
    paper = _bib_title("wang2026rank1")
    assert paper in [ref["title"] for ref in cff.get("references", [])]


def test_license_is_mit():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_strict_build_fails_on_a_broken_reference(tmp_path):
    """`make book` builds with STRICT (-W -n --keep-going): a page that references a label nobody defines
    fails the build, and the same page with the label defined passes."""
    import shutil
    import subprocess
    jb = shutil.which("jupyter-book") or str(ROOT / ".venv" / "bin" / "jupyter-book")
    if not Path(jb).exists():
        pytest.skip("jupyter-book is not installed (the book extra)")
    strict = re.search(r"^STRICT \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    (tmp_path / "_config.yml").write_text("title: t\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: 'off'\n")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: index\n")

    def build(text):
        (tmp_path / "index.md").write_text(text)
        shutil.rmtree(tmp_path / "_build", ignore_errors=True)
        return subprocess.run([jb, "build", str(tmp_path), *strict], capture_output=True, text=True)
    bad = build("# Index\n\nSee {numref}`fig-nowhere`.\n")
    assert bad.returncode != 0 and "fig-nowhere" in bad.stdout + bad.stderr
    good = build("# Index\n\n```{figure} https://example.org/x.png\n:name: fig-here\n\nA caption.\n```\n\nSee {numref}`fig-here`.\n")
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]


def test_a_glued_table_is_a_numbered_cross_referenced_table(tmp_path):
    """book.keep_table glues a DataFrame (or a one-cell 'pending' table) that a `{table}` directive places
    as a numbered table: the strict build passes, {numref} resolves to it, and every cell of the DataFrame
    appears in the page's table, in order."""
    import shutil
    import subprocess
    from html.parser import HTMLParser
    nbformat = pytest.importorskip("nbformat")
    jb = shutil.which("jupyter-book") or str(ROOT / ".venv" / "bin" / "jupyter-book")
    if not Path(jb).exists():
        pytest.skip("jupyter-book is not installed (the book extra)")
    strict = re.search(r"^STRICT \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    (tmp_path / "_config.yml").write_text("title: t\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: force\n")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    directive = "````{{table}} {cap}\n:name: {key}\n\n```{{glue:md}} {key}\n:format: gfm\n```\n````\n"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Index\n\nSee {numref}`tbl-ours` and {numref}`tbl-later`."),
        nbformat.v4.new_code_cell(
            "import pandas as pd\nfrom rank1lib.book import keep_table\n"
            "df = pd.DataFrame({'method': ['GD', 'Rank-1 + GD'], 'A-FID': ['96.1 ± 2.0', '88.5']}).set_index('method')\n"
            "keep_table('tbl-ours', df)\nkeep_table('tbl-later', None, pending='not yet')"),
        nbformat.v4.new_markdown_cell(directive.format(cap="**Ours.** A caption.", key="tbl-ours")
                                      + "\n" + directive.format(cap="Later.", key="tbl-later")),
    ]
    nbformat.write(nb, tmp_path / "index.ipynb")
    out = subprocess.run([jb, "build", str(tmp_path), *strict], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    page = (tmp_path / "_build" / "html" / "index.html").read_text()

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append((dict(attrs).get("id"), []))
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][1].append(self.cell.strip())
                self.cell = None
    p = Cells()
    p.feed(page)
    tables = dict(p.tables)
    assert tables["tbl-ours"] == ["method", "A-FID", "GD", "96.1 ± 2.0", "Rank-1 + GD", "88.5"]
    assert tables["tbl-later"] == ["status", "not yet"]
    assert re.search(r'href="#tbl-ours"><span class="std std-numref">Table 1', page)
    assert re.search(r'href="#tbl-later"><span class="std std-numref">Table 2', page)
