"""The README's claims table is the ledger of the committed cpu tier, written by a command; stale fails."""
from pathlib import Path

import pytest

from rank1lib import claims

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_claims_table_is_the_current_ledger():
    text = README.read_text()
    block = text.split(claims.README_START, 1)[1].split(claims.README_END, 1)[0].strip()
    assert block == claims.readme_table(claims.ledger("cpu")), (
        "README.md's claims table is stale: run python -m rank1lib claims --profile cpu --readme README.md")


def test_write_readme_replaces_only_its_block(tmp_path):
    rows = [{"id": "C1", "where": "Fig. 1", "verdict": "agree", "settings": [{"dataset": "mnist-5k"}]}]
    p = tmp_path / "R.md"
    p.write_text(f"intro\n{claims.README_START}\nold\n{claims.README_END}\nrest\n")
    assert claims.write_readme(rows, p)
    assert p.read_text() == (f"intro\n{claims.README_START}\n| claim | paper | verdict | judged on | other models and "
                             f"budgets |\n|---|---|---|---|---|\n| C1 | Fig. 1 | agrees | mnist-5k | — |\n"
                             f"{claims.README_END}\nrest\n")
    assert not claims.write_readme(rows, p)  # already current
    (tmp_path / "S.md").write_text("no block")
    with pytest.raises(ValueError, match="no '<!-- claims table: start -->'"):
        claims.write_readme(rows, tmp_path / "S.md")
