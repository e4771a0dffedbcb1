# Semantic image search: every developer and CI entry point.
# `make run` starts the system locally; `make test` runs the tests.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= extractor,search,cli,export,dev
# Where `make model` writes the exported model and `make run` serves it from.
MODEL ?= auto
MODEL_DIR ?= models/default
# fp32, or int8 (static quantization; its speed and accuracy: docs/extractor-performance.md).
PRECISION ?= fp32
SETUP_STAMP := $(VENV)/.installed-$(shell printf '%s' "$(EXTRAS)" | tr ',' '-')
# Every extra: constraints.txt pins all that any of them, and so any image, installs.
LOCK_EXTRAS := extractor,search,cli,export,dev,bench

# Debian packages each entry point needs; scripts/system-packages installs those missing
# (as root, or with password-less sudo) and otherwise prints the command to run.
RUN_PACKAGES := postgresql postgresql-contrib
# darknet only for its sample photos (the tests of meaning), dataset-fashion-mnist for the
# labeled images of the quality check.
TEST_PACKAGES := $(RUN_PACKAGES) darknet dataset-fashion-mnist
# `make test` fails when the suite's line coverage falls below this: two points under the
# figure measured when it was set (CHANGELOG.md). Raise it as coverage rises.
COVERAGE_FLOOR ?= 78

# What `make check` runs `buf breaking` against: where this branch left main (the local
# branch, else origin's); on main itself, the commit before HEAD (its first parent, so the
# change that landed last), or HEAD on a shallow clone with no history. Read from the
# local git history, so offline. Override with BREAKING_BASE=<commit>.
BREAKING_BASE ?= $(shell head=$$(git rev-parse HEAD); \
	base=$$(git merge-base HEAD main 2>/dev/null || git merge-base HEAD origin/main 2>/dev/null \
		|| echo $$head); \
	if [ "$$base" = "$$head" ]; then git rev-parse --verify -q 'HEAD^1' || echo $$head; \
	else echo $$base; fi)

.PHONY: setup lock version protos model run test test-fast system-run system-test check \
	lint format bench eval deploy-check clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || scripts/system-packages python3 python3-venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt -e '.[$(EXTRAS)]'
	touch $@

# Re-resolves constraints.txt from pyproject.toml: the newest versions that fit. A local
# version label (torch's +cpu) is dropped: the public version matches it on every index.
lock: setup
	CUSTOM_COMPILE_COMMAND='make lock' $(PY) -m piptools compile --quiet --upgrade \
		--strip-extras --no-emit-index-url --no-emit-find-links \
		--extra $(LOCK_EXTRAS) --output-file constraints.txt pyproject.toml
	sed -i -E 's/^([A-Za-z0-9_.-]+==[^+ ]+)\+[A-Za-z0-9.]+/\1/' constraints.txt

# The project's version, read from pyproject.toml, the one place that holds it.
version:
	@$(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])'

protos: setup
	$(PY) scripts/gen_protos.py

# VGG16 where its ImageNet weights can be had (online, or WEIGHTS=path/to/vgg16-397923af.pth),
# otherwise the offline model, EfficientNet-Lite0. A valid existing export is kept.
model: setup
	$(PY) -m extractor_service.export --model $(MODEL) --precision $(PRECISION) \
		--out $(MODEL_DIR) $(if $(WEIGHTS),--weights $(WEIGHTS))

# The system packages first, so that a missing one stops it before the model export.
# CITUS=1: on a local Citus coordinator and two workers (Citus built by CITUS_INSTALL).
CITUS ?=
CITUS_INSTALL ?= ../shared/citus/install.sh
run: system-run model
	$(if $(CITUS),$(CITUS_INSTALL))
	$(PY) -m devenv.run --model-dir $(MODEL_DIR) $(if $(CITUS),--citus)

system-run:
	@scripts/system-packages $(RUN_PACKAGES)

system-test:
	@scripts/system-packages $(TEST_PACKAGES)

# The whole suite, with line coverage of the project's own code (CI runs this).
test: system-test setup
	$(PY) -m pytest --cov --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR) \
		$(PYTEST_ARGS)

# The edit loop: all but the slow tests (model export, int8 quantization), no coverage.
test-fast: system-test setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Render, validate and lint deploy/ (also part of `make test`).
deploy-check: setup
	$(PY) -m pytest tests/deploy $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf breaking protos \
		--against '$(shell git rev-parse --git-common-dir)#ref=$(BREAKING_BASE),subdir=protos'
	$(PY) scripts/gen_protos.py --check

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Retrieval quality (docs/quality.md): Fashion-MNIST and photo copies through the API,
# beside numpy on the same vectors.
eval: setup
	-@scripts/system-packages dataset-fashion-mnist
	$(PY) -m evaluation $(EVAL_ARGS)

# Each prints its figures (docs/*-performance.md); BENCH_ARGS=--quick for a short run.
bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.bench_preprocess
	$(PY) -m benchmarks.bench_extractor --model vgg16 $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_precision
	$(PY) -m benchmarks.bench_search $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_ingest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
