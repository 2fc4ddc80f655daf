# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PyTorch for the reference model of benchmarks/ and its parity test. The default is the CPU
# build kept on this project's machines; `TORCH=` leaves torch out (its tests then skip, saying
# why); elsewhere prefer the CPU wheel index (see benchmarks/README.md) over PyPI's CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv test lint format demo report bench bench-extract bench-store bench-export bench-serve table4 browser postgres clean

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

test: lint browser postgres
	$(PY) -m pytest -q -n 2 tests

# Chromium for the review page's browser test, where it can be installed (root with apt, as in
# CI); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; } && \
	  echo "browser: installed chromium"; } || echo "browser: chromium not installed (the browser test will skip)"

# The PostgreSQL server binaries for the store's tests (tests/postgres_server.py starts a
# throwaway cluster on 127.0.0.1 in a temporary folder), where they can be installed (root with
# apt, as in CI; the package's own default cluster is not created); elsewhere those tests skip
# and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  mkdir -p /etc/postgresql-common && \
	  { [ -f /etc/postgresql-common/createcluster.conf ] || echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; } && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1; }; } && \
	  echo "postgres: installed the postgresql server"; } || echo "postgres: no PostgreSQL server (the database tests will skip)"

# A short training run: Chia + MiniLM from ../shared when present, else the shipped sample;
# then the README's quickstart: three trials' records through it, as a page to review.
demo: $(STAMP)
	$(VENV)/bin/jointre demo --config=configs/demo.py --workdir=workdirs/demo
	$(VENV)/bin/jointre extract --workdir=workdirs/demo --input=docs/chia_test_records.json \
	    --format=html --output=workdirs/demo/review.html
	@echo "demo: open workdirs/demo/review.html in a browser to review the extraction"

report: $(STAMP)
	$(PY) -m jointre_jax.tools.report --config=configs/minilm_m2.py

# JAX vs PyTorch and bucketed vs fixed-length throughput on this machine (under 10 minutes).
bench: $(STAMP)
	$(PY) -m benchmarks.throughput --config=configs/minilm_m2.py --json=benchmarks/results/cpu_minilm.json

# End-to-end extraction throughput of a trained run on Chia's test split: make bench-extract RUN=DIR
bench-extract: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make bench-extract RUN=DIR (a trained run's workdir)"; exit 2; }
	$(PY) -m benchmarks.extraction --workdir=$(RUN) --json=benchmarks/results/cpu_extraction.json

# Model folders of a trained run in float32, bfloat16 and float16 (sizes, agreement, Chia test
# scores; about 6 minutes on 2 cores): make bench-export RUN=DIR
bench-export: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make bench-export RUN=DIR (a trained run's workdir)"; exit 2; }
	$(PY) -m benchmarks.export --workdir=$(RUN) --json=benchmarks/results/cpu_export.json

# The service under 16 clients for 60 s on loopback, and extract on the same criteria:
# make bench-serve MODEL=DIR (a model folder of jointre export)
bench-serve: $(STAMP)
	@test -n "$(MODEL)" || { echo "usage: make bench-serve MODEL=DIR (a model folder)"; exit 2; }
	$(PY) -m benchmarks.serve_load --model=$(MODEL) --json=benchmarks/results/cpu_serve.json

# Streaming extraction into DuckDB, end to end: 1 process, 2 shards, 10x the records (about
# 12 minutes on 2 cores): make bench-store RUN=DIR
bench-store: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make bench-store RUN=DIR (a trained run's workdir)"; exit 2; }
	$(PY) -m benchmarks.store --workdir=$(RUN) --json=benchmarks/results/cpu_store.json

# The Table 4 grid on the CPU budget (9 rows x 3 seeds, about 1 h 40 min on 2 cores); resumable.
table4: $(STAMP)
	$(PY) -m jointre_jax.tools.grid --config=configs/minilm_table4_cpu.py --workdir=runs/table4 --seeds=0,1,2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
