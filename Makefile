# The commands people expect: `make test`, `make lint`, `make bench`.
PYTHON ?= python3

.PHONY: install test lint bench serve

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

serve:
	call-ledger serve
