# The two commands of the README: `make demo` (the main job) and `make test` (every check).
# Each sets up what is missing first: a virtual environment in .venv with the project installed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test setup export clean-nbs readme sync-check nbtest pytest browser-deps bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## The main job: train on the embedded synthetic faces, then sample a grid and a GIF.
demo: $(STAMP)
	$(BIN)/face-diffusion demo

## Every check, in order: export in sync, notebooks clean, README in sync, notebooks, pytest.
test: $(STAMP) browser-deps
	$(BIN)/python tools/check_sync.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev-test --n-workers 2 --timing
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n 2 tests

browser-deps:
	@bash tools/setup_browser.sh

## Developer helpers (not needed by the README's two commands).
export: $(STAMP)
	$(BIN)/python tools/colab.py && $(BIN)/nbdev-clean && $(BIN)/nbdev-export && $(BIN)/python tools/make_readme.py
	touch $(STAMP)   # nbdev-export rewrites pyproject.toml unchanged: no reinstall for that

sync-check: $(STAMP)
	$(BIN)/python tools/check_sync.py

nbtest: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev-test --n-workers 2 --timing

pytest: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n 2 tests

## Speed against the anchors (bench/README.md): a tiny CPU smoke run here; pass ARGS for a GPU run.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m bench.train_bench $(or $(ARGS),--tiny)
