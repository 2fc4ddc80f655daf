# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PyTorch for the reference model of benchmarks/ and its parity test. The default is the CPU
# build kept on this project's machines; `TORCH=` leaves torch out (its tests then skip, saying
# why); elsewhere prefer the CPU wheel index (see benchmarks/README.md) over PyPI's CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv test lint format demo report bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(if $(TORCH),$(PY) -m pip install -q '$(TORCH)')
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

# JAX vs PyTorch and bucketed vs fixed-length throughput on this machine (under 10 minutes).
bench: $(STAMP)
	$(PY) -m benchmarks.throughput --config=configs/minilm_m2.py --json=benchmarks/results/cpu_minilm.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
