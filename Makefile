# The commands people expect: `make test`, `make lint`, `make docs`, `make bench`.
PYTHON ?= python3

.PHONY: install test lint docs bench bench-calls bench-cluster serve lock

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest -q -p no:cacheprovider

# ruff, strict mypy, and the layer contracts of pyproject.toml's [tool.importlinter].
lint:
	$(PYTHON) -m ruff check call_ledger worker api tests bench examples
	$(PYTHON) -m mypy
	$(PYTHON) -c 'from importlinter.cli import lint_imports_command; lint_imports_command()'

# The documentation site (README.md as its home page, docs/ the rest) into site/; strict: a broken
# link, anchor or page left out of mkdocs.yml's nav fails the build, as it fails CI.
docs:
	$(PYTHON) -m mkdocs build --strict

# One table: apply, intake, GET, webhook-to-GET latency and memory, each against the floors.
bench:
	$(PYTHON) bench/run.py

# The calls API's reads on 1,000,000 calls (the fill runs one process per core; at 50,000 calls it
# ran 2,100 calls/s on a busy 2-core machine, 1,600 through the worker's scripts).
bench-calls:
	$(PYTHON) bench/calls_api.py 1000000

# Intake and apply on one Redis and a 3-master cluster, 1 and 2 processes, 1 and 6 stream shards,
# with each Redis node's cost per event (a few minutes; `--quick` for about a minute).
bench-cluster:
	$(PYTHON) bench/cluster.py

serve:
	call-ledger serve

# The image's hash-locked dependencies (deploy/Dockerfile installs them with --require-hashes), for
# the image's Python; tests/project/test_lock.py fails when pyproject.toml and the lock disagree. Needs uv
# (`pip install uv`), and the network.
UV ?= uv
LOCK_FLAGS = --generate-hashes --python-version 3.11.13 --python-platform linux --custom-compile-command "make lock"
lock:
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) -o deploy/requirements.lock
	$(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV) pip compile - $(LOCK_FLAGS) -o deploy/build-requirements.lock
