# Two commands on a fresh machine: `make serve` (the service on the bundled models) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# checkov, the manifests' policy scan, in a venv of its own: its pins clash with the project's.
TOOLS ?= .venv-tools
PY := $(VENV)/bin/python
DATA_DIR ?= $(abspath ../shared/data)
# Tests on pytest-xdist's workers, one per core up to four: many wait on servers, subprocesses and TensorFlow's
# import. A module's tests run on one worker, so its fixtures (an image build, a Ray cluster, a browser, the raw
# corpora) are made once (loadgroup would group finer, but pytest 9.2 breaks it: pytest-xdist #1386).
# PARALLEL= runs them in one process.
PARALLEL ?= -n auto --maxprocesses 4 --dist loadfile

.PHONY: serve test test-fast fixtures docs bench bundled-models clean proto

serve: $(VENV)/.installed-serve
	$(PY) -m rnnserve.service

test: $(VENV)/.installed-dev $(TOOLS)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	RNNSERVE_DATA_DIR=$(DATA_DIR) $(PY) -m pytest $(PARALLEL)

test-fast: $(VENV)/.installed-dev  # the API, runtime and scoring tests, without the slow tier (-m slow)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	RNNSERVE_DATA_DIR=$(DATA_DIR) $(PY) -m pytest $(PARALLEL) -m "not slow"

fixtures: $(VENV)/.installed-dev  # the tiny packages the service tests run on (tests/fixtures/, committed)
	RNNSERVE_DATA_DIR=$(DATA_DIR) $(PY) -m tests.fixtures.build

proto: $(VENV)/.installed-dev  # the gRPC descriptor set the server loads, from service/grpc/inference.proto
	$(PY) -m grpc_tools.protoc -Iservice/grpc --descriptor_set_out=service/grpc/protocol.binpb service/grpc/inference.proto

docs: $(VENV)/.installed-dev  # the documentation site as static files in site/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(VENV)/.installed-dev
	$(PY) bench/load.py

bundled-models: $(VENV)/.installed-dev
	RNNSERVE_DATA_DIR=$(DATA_DIR) bash training/bundled_models.sh

$(VENV)/.installed-serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[train,dev,ray,store]"
	touch $@ $(VENV)/.installed-serve

$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "checkov>=3.2,<4"
	touch $@

clean:
	rm -rf $(VENV) $(TOOLS) runs .pytest_cache site
