# The commands people expect: `make test`, `make lint`, `make bench`.
PYTHON ?= python3

.PHONY: install test lint bench bench-cluster serve

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest -q -p no:cacheprovider

lint:
	ruff check ledger worker api tests bench examples
	mypy

bench:
	$(PYTHON) bench/run.py
	$(PYTHON) bench/calls_api.py 1000000

# Intake and apply on one Redis and a 3-master cluster, 1 and 2 processes, 1 and 6 stream shards,
# with each Redis node's cost per event (a few minutes; `--quick` for about a minute).
bench-cluster:
	$(PYTHON) bench/cluster.py

serve:
	call-ledger serve
