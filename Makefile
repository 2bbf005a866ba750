# Two entry points on a fresh clone (Python >= 3.10, make):
#   make run    the main job on its built-in default (demo data)
#   make test   lint (ruff), types (mypy on leukemia/, search/, benchmarks/), then the whole test suite
# Each bootstraps .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS := dev$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,gpu)

.PHONY: run test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) search/run.py $(ARGS)

test: venv
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) runs
