#!/usr/bin/env bash
# `make wheelcheck`: build rank1lib's wheel from a clean clone of HEAD, install it into a fresh venv
# outside the checkout, check that the core install pulls no book or experiment packages and that the
# public API imports, then add the `repro` extra and run chapter 8 (rank-1 EWC in a plain diffusers
# loop) as a script at the ci profile against the installed package.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build_py=${BUILD_PY:-$repo/.venv/bin/python}   # has `build` and nbformat (the test extra)
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

git clone -q "$repo" "$work/src"
"$build_py" -m build --wheel --outdir "$work/dist" "$work/src" > "$work/build.log" 2>&1 \
  || { tail -20 "$work/build.log"; exit 1; }
whl=$(ls "$work"/dist/rank1lib-*.whl)
echo "built $(basename "$whl")"
"$py" -m venv "$work/venv"
v="$work/venv/bin"
"$v/pip" install -q "$whl"

cd "$work"   # nothing from the checkout on the path from here on
"$v/python" - <<'EOF'
import importlib.util as u
import rank1lib
from rank1lib import profiles
extra = [m for m in ("jupyter_book", "papermill", "matplotlib", "torchmetrics", "mlxtend", "torchvision",
                     "pandas") if u.find_spec(m)]
assert not extra, f"the core install pulled {extra}"
assert rank1lib.Rank1EWC and rank1lib.task_statistics
cfgs = [profiles.load_profile(p).name for p in profiles.PROFILES]  # the YAML files ship in the wheel
assert "/venv/" in rank1lib.__file__, f"imported {rank1lib.__file__}, not the installed wheel"
print(f"core install: {rank1lib.__file__}; profiles {cfgs} load; no book packages")
EOF
"$v/pip" install -q "$whl[repro]"
"$build_py" - "$repo/book/08_your_own_training.ipynb" > example.py <<'EOF'
import sys, nbformat
nb = nbformat.read(sys.argv[1], 4)
for c in nb.cells:
    if c.cell_type == "code":
        print('profile = "ci"' if "parameters" in c.metadata.get("tags", []) else c.source, end="\n\n")
EOF
"$v/python" example.py
echo "wheel check passed"
