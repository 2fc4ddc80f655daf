# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PyTorch for the reference model of benchmarks/ and its parity test. The default is the CPU
# build kept on this project's machines; `TORCH=` leaves torch out (its tests then skip, saying
# why); elsewhere prefer the CPU wheel index (see benchmarks/README.md) over PyPI's CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv test lint format demo report bench bench-extract table4 clean

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

# End-to-end extraction throughput of a trained run on Chia's test split: make bench-extract RUN=DIR
bench-extract: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make bench-extract RUN=DIR (a trained run's workdir)"; exit 2; }
	$(PY) -m benchmarks.extraction --workdir=$(RUN) --json=benchmarks/results/cpu_extraction.json

# The Table 4 grid on the CPU budget (9 rows x 3 seeds, about 1 h 40 min on 2 cores); resumable.
table4: $(STAMP)
	$(PY) -m jointre_jax.grid --config=configs/minilm_table4_cpu.py --workdir=runs/table4 --seeds=0,1,2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
