# Semantic image search: every developer and CI entry point.
# `make run` starts the system locally; `make test` runs the tests.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= extractor,search,cli,export,dev
# Where `make model` writes the exported model and `make run` serves it from.
MODEL ?= auto
MODEL_DIR ?= models/default
# fp32, or int8 (static quantization: 3.3-3.8x faster VGG16 on CPUs with VNNI).
PRECISION ?= fp32
SETUP_STAMP := $(VENV)/.installed-$(shell printf '%s' "$(EXTRAS)" | tr ',' '-')
# Every extra: constraints.txt pins all that any of them, and so any image, installs.
LOCK_EXTRAS := extractor,search,cli,export,dev,bench

.PHONY: setup lock version protos model run test check lint format bench eval deploy-check clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml constraints.txt
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

# The project's version: pyproject.toml's, as the installed package reports it.
version: setup
	@$(PY) -c 'import importlib.metadata; print(importlib.metadata.version("imagesearch"))'

protos: setup
	$(PY) scripts/gen_protos.py

# VGG16 where its ImageNet weights can be had (online, or WEIGHTS=path/to/vgg16-397923af.pth),
# otherwise the offline model, EfficientNet-Lite0. A valid existing export is kept.
model: setup
	$(PY) -m extractor_service.export --model $(MODEL) --precision $(PRECISION) \
		--out $(MODEL_DIR) $(if $(WEIGHTS),--weights $(WEIGHTS))

run: model
	$(PY) -m devenv.run --model-dir $(MODEL_DIR)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Render, validate and lint deploy/ (also part of `make test`).
deploy-check: setup
	$(PY) -m pytest tests/deploy $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint
	$(PY) scripts/gen_protos.py --check

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
# Retrieval quality (docs/quality.md): Fashion-MNIST and photo copies through the API,
# beside numpy on the same vectors.
eval: setup
	@test -f $(FASHION_MNIST) || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -qq --no-install-recommends dataset-fashion-mnist
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
