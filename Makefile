# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint format demo report clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q -n 2 tests

# A short training run: Chia + MiniLM from ../shared when present, else the shipped sample.
demo: $(STAMP)
	$(PY) -m jointre_jax.demo --config=configs/demo.py --workdir=workdirs/demo

report: $(STAMP)
	$(PY) -m jointre_jax.data.report --config=configs/minilm_m2.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
