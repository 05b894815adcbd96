# One command installs everything and runs: `make run`, `make test`, `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

run: install
	$(PY) -m cryptostats $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m cryptostats.demo $(ARGS)

# Benchmarks (not part of test): needs wrk (apt-get install -y wrk).
bench: install
	$(PY) -m bench.run $(ARGS)

lint: install
	$(VENV)/bin/ruff check cryptostats tests bench
	$(VENV)/bin/ruff format --check cryptostats tests bench

clean:
	rm -rf $(VENV) data .pytest_cache
