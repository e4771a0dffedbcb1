# syntax=docker/dockerfile:1
# The extractor on CPUs: ONNX Runtime serving the model baked in from a model image
# (model.Dockerfile). Runtime stage: Python, the `extractor` extra, the model; no
# compilers, no pip, no torch; runs as an unprivileged user.
#
# Build from the repository root (BuildKit; the ignore file beside this one applies):
#   docker build -f deploy/docker/model.Dockerfile -t imagesearch-model:vgg16 .
#   docker build -f deploy/docker/extractor.Dockerfile -t imagesearch-extractor:$(make version) \
#       --build-arg MODEL_IMAGE=imagesearch-model:vgg16 .
# or serve a model that `make model` exported, with no model image:
#   docker build -f deploy/docker/extractor.Dockerfile --build-context model=models/default .

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG MODEL_IMAGE=imagesearch-model:vgg16

FROM ${MODEL_IMAGE} AS model

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# At the versions constraints.txt pins (`make lock`). The context holds no package but
# extractor_service and what it imports; the console scripts of the other roles go. pip
# compiles the installed modules, so nothing is written at run time (read-only root).
RUN /opt/venv/bin/pip install --constraint=constraints.txt ".[extractor]" \
    && rm /opt/venv/bin/imagesearch /opt/venv/bin/imagesearch-search \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
# pyproject.toml's version: --build-arg VERSION=$(make version)
ARG VERSION
LABEL org.opencontainers.image.title="imagesearch-extractor" \
      org.opencontainers.image.description="Semantic image search: CNN embeddings over gRPC (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 imagesearch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin imagesearch
COPY --from=build /opt/venv /opt/venv
COPY --from=model / /opt/imagesearch/model/
COPY deploy/docker/healthcheck.py /opt/imagesearch/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EXTRACTOR_HOST=0.0.0.0 \
    EXTRACTOR_PORT=50051 \
    EXTRACTOR_METRICS_PORT=9090 \
    EXTRACTOR_MODEL_DIR=/opt/imagesearch/model
# Fail the build, not the rollout, on a model whose ONNX file does not match its manifest
# (the server checks it again at every start).
RUN ["/opt/venv/bin/python", "-c", "import pathlib; from extractor_service.manifest import load_manifest, verify_checksum; d = pathlib.Path('/opt/imagesearch/model'); m = load_manifest(d); verify_checksum(d, m); print('model', m.name, m.version, 'sha256 verified')"]
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/imagesearch/healthcheck.py", "EXTRACTOR_PORT"]
ENTRYPOINT ["/opt/venv/bin/imagesearch-extractor"]
