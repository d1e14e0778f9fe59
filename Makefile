# The two commands of the README:  `make up`  and  `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup up test bench protos model clean

# A virtualenv with the project and its dev tools; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The segmentation model, fetched from the mediapipe wheel and checked by sha256.
model: $(STAMP)
	$(PY) -m services.inference.model

setup: $(STAMP) model

# Brings the embedded mesh up (Triton, inference, gateway), runs a demo removal,
# serves on 127.0.0.1:50051 until Ctrl-C. `make up CELLS=eu,us`: one cell per region,
# side by side (ports 50051, 50061; data under .data/cells/<region>/).
CELLS ?= eu
up: setup
	$(PY) -m services.mesh --cells $(CELLS)

# Lint, generated-code check, then the whole suite against the real mesh.
test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m tools.protos --check
	$(PY) -m pytest

# The mesh under load against the floor, then erase quality on held-out photos;
# writes bench/results/ and the README's tables.
bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.erase

protos: $(STAMP)
	$(PY) -m tools.protos

clean:
	rm -rf .data .cache
