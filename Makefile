# Two commands: `make test` and `make book`. Everything else is a step they depend on.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
CHAPTERS := $(sort $(wildcard book/[0-9]*.ipynb))
EXEC_DIR := _build/executed/$(PROFILE)

.PHONY: install data test unit nbcheck book clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[book,test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

data: install
	$(PY) -m rank1lib fetch fmnist || true
	$(PY) -m rank1lib fetch mnist-5k

unit: install
	$(PY) -m pytest tests

nbcheck: install
	$(PY) -m rank1lib.book execute --profile ci --out _build/executed/ci $(CHAPTERS)
	$(PY) -m pytest --nbval-lax -p no:cacheprovider _build/executed/ci

test: unit nbcheck

book: install data
	$(PY) -m rank1lib.book execute --profile $(PROFILE) --out $(EXEC_DIR) $(CHAPTERS)
	$(PY) -m rank1lib.book stage --profile $(PROFILE) --executed $(EXEC_DIR)
	$(VENV)/bin/jupyter-book build _build/site --path-output _build >/dev/null
	@echo "Book: $$(pwd)/_build/_build/html/index.html"

clean:
	rm -rf _build
