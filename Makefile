# The two commands of the README:  `make up`  and  `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Material's notice about MkDocs 2 would otherwise open every build's output.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

.PHONY: setup up test test-unit bench bench-overload protos model clean lock fuzz docs docs-serve

# A virtualenv with the project, its services and dev tools, at the locked versions
# (requirements/dev.lock; the images install requirements/server.lock, the same pins).
$(STAMP): pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# After changing pyproject.toml's dependencies: re-resolve both lock files (same pins).
LOCK := $(PY) -m uv pip compile pyproject.toml --python-version 3.11 --python-platform x86_64-manylinux_2_35 \
	--no-header --annotation-style line --quiet
lock: $(STAMP)
	$(LOCK) --extra server --extra dev -o requirements/dev.lock
	$(LOCK) --extra server -c requirements/dev.lock -o requirements/server.lock

# The segmentation model, fetched from the mediapipe wheel and checked by sha256.
model: $(STAMP)
	$(PY) -m services.inference.model

# buf (contract lint and breaking checks) and the TypeScript client, from their npm lock;
# without npm the tests that need them are skipped and say why.
NODE_STAMP := clients/typescript/node_modules/.package-lock.json
$(NODE_STAMP): clients/typescript/package-lock.json
	@# `npm install` from the lock, not `npm ci`: the registry lacks some of buf's optional
	@# per-platform packages, which `npm ci` insists the lock lists.
	@if command -v npm >/dev/null; then npm install --prefix clients/typescript --no-save --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: buf and the TypeScript client tests will be skipped"; fi

# The Go client's toolchain, from Debian's packages (the Go module proxy is out of reach, so
# the client builds offline from their sources in /usr/share/gocode): installed where apt-get
# can run without a prompt (as root); elsewhere the Go client tests are skipped and say why.
# golang/protobuf 1.5 (not grpc-go's other choice, 1.3): grpc-go's codec goes through it, and
# only 1.4 and later marshal the APIv2 messages protoc-gen-go makes.
GO_PACKAGES := golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev \
	protoc-gen-go protoc-gen-go-grpc
GO_STAMP := clients/go/.toolchain
$(GO_STAMP): Makefile
	@if [ "$$(dpkg-query -W -f '$${db:Status-Abbrev}\n' $(GO_PACKAGES) 2>/dev/null | grep -c '^ii')" = $(words $(GO_PACKAGES)) ]; then \
		touch $@; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "apt-get install $(GO_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			-o DPkg::Lock::Timeout=300 $(GO_PACKAGES) >/dev/null && touch $@; \
	else echo "Debian's Go packages ($(GO_PACKAGES)) are missing and apt-get cannot install them here" \
		"(not root or no apt-get): the Go client tests will be skipped"; fi

setup: $(STAMP) model $(NODE_STAMP) $(GO_STAMP)

# Brings the embedded mesh up (Triton, inference, gateway), runs a demo removal,
# serves on 127.0.0.1:50051 until Ctrl-C. `make up CELLS=eu,us`: one cell per region,
# side by side (ports 50051, 50061; data under .data/cells/<region>/).
CELLS ?= eu
up: setup
	$(PY) -m services.launcher --cells $(CELLS)

# Lint, generated-code and generated-docs checks, the docs built strictly, then the whole suite
# against the real mesh (tests/deploy/test_docs.py also checks the links into docs/).
test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m tools.protos --check
	$(PY) -m tools.docs --check
	$(MKDOCS) build --strict  # not --quiet: it hides the warnings that --strict counts
	$(PY) -m pytest

# The unit tests alone (no Triton, no services): the quick loop while changing one module.
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

# The mesh under load against the floor, edge quality per detail level (bench.quality, with its
# contact sheet), then erase quality on held-out photos; writes bench/results/, the tables of
# docs/benchmarks.md (and the models', quality and erasing pages) and the plots under docs/images/.
bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.quality
	$(PY) -m bench.erase
	$(PY) -m bench.overload

# The mesh at 4x its measured capacity for 60 s (bench/overload.py; OVERLOAD_SECONDS=20 for a shorter run):
# what is refused, how fast, the latency of what is admitted, peak memory, crashes, credits.
OVERLOAD_SECONDS ?= 60
bench-overload: setup
	$(PY) -m bench.overload --seconds $(OVERLOAD_SECONDS)

# Long fuzzing runs (tests/mesh/test_fuzz.py runs each fuzzer briefly): the atheris harnesses for
# FUZZ_MINUTES in all, niced on one core, then the RPC fuzz through a mesh with FUZZ_SCALE times
# CI's examples. Findings: .cache/fuzz/artifacts/ and the test's output.
FUZZ_MINUTES ?= 30
FUZZ_SCALE ?= 20
fuzz: setup
	$(PY) -m fuzz.run --minutes $(FUZZ_MINUTES)
	CUTOUT_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest tests/mesh/test_fuzz.py -k rpcs -s -q

protos: $(STAMP)
	$(PY) -m tools.protos

# The docs site (docs/, mkdocs.yml) into .cache/site/: the reference pages regenerated from the code
# first, then built strictly (a broken link or anchor fails). docs-serve rebuilds it on every change.
docs: $(STAMP)
	$(PY) -m tools.docs
	$(MKDOCS) build --strict

docs-serve: $(STAMP)
	$(PY) -m tools.docs
	$(MKDOCS) serve

clean:
	rm -rf .data .cache
