# Two commands do everything on a fresh machine:
#   make demo   create .venv, install, run the demo sweep, print its best-params table
#   make test   create .venv, install, run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	rm -rf results/digits-demo
	$(VENV)/bin/sweep run search_spaces/demo.yaml
	$(VENV)/bin/sweep export digits-demo --format md

test: install
	$(VENV)/bin/pytest -q

bench: install  # every benchmark at full size, appended to benchmarks/RESULTS.md (about an hour on 2 cores)
	$(PY) -m benchmarks --out benchmarks/RESULTS.md

bench-quick: install  # every benchmark small: checks they work (CI), never to judge speed
	$(PY) -m benchmarks --quick

lint: install
	$(VENV)/bin/ruff check sweep trainers tests
	$(VENV)/bin/mypy sweep trainers

clean:
	rm -rf results/*/ mlruns.db mlartifacts
