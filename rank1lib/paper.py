"""The paper's printed numbers (paper_numbers.yaml), in the shapes the chapters use; never our results."""
from pathlib import Path

import yaml

_RAW = yaml.safe_load((Path(__file__).with_name("paper_numbers.yaml")).read_text())

TABLE1 = {ds: {m: tuple(v) for m, v in t.items()} for ds, t in _RAW["table1"].items()}
TABLE3 = {(ds, m): h for ds, t in _RAW["table3"].items() for m, h in t.items()}
TABLE5 = {ds: {int(k): tuple(v) for k, v in t.items()} for ds, t in _RAW["table5"].items()}
TABLE6 = {ds: tuple(v) for ds, v in _RAW["table6"].items()}
APPENDIX_C = dict(_RAW["appendix_c"])
FIGURE3 = [tuple(row) for row in _RAW["figure3"]]


def figure3_table():
    """What sections 3.2-3.3 report about Figure 3's model, one row per quantity (a DataFrame)."""
    import pandas as pd
    return pd.DataFrame(FIGURE3, columns=["quantity", "paper"]).set_index("quantity")
