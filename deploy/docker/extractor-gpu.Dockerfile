# syntax=docker/dockerfile:1
# The extractor on NVIDIA GPUs: as extractor.Dockerfile, with onnxruntime-gpu on a CUDA
# runtime base. onnxruntime-gpu 1.23.2 is built for CUDA 12.x and cuDNN 9 (the wheels on
# PyPI from 1.24 on need CUDA 13); the base image carries exactly those libraries. The
# node needs an NVIDIA driver for CUDA 12.6 and the NVIDIA device plugin.
#
# Build from the repository root (BuildKit; the ignore file beside this one applies):
#   docker build -f deploy/docker/extractor-gpu.Dockerfile -t imagesearch-extractor-gpu:$(make version) \
#       --build-arg MODEL_IMAGE=imagesearch-model:vgg16 .

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG MODEL_IMAGE=imagesearch-model:vgg16

FROM ${MODEL_IMAGE} AS model

FROM ${CUDA_IMAGE} AS build
# The CUDA 12 / cuDNN 9 build of the `onnxruntime` that the extractor extra names.
ARG ONNXRUNTIME_GPU_VERSION=1.23.2
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
WORKDIR /src
COPY . .
# The extractor extra exactly, at the versions constraints.txt pins (`make lock`), without
# the other roles' console scripts; then its CPU onnxruntime swapped for the GPU build
# (both install the `onnxruntime` module, so one has to go before the other comes in).
RUN /opt/venv/bin/pip install --constraint=constraints.txt ".[extractor]" \
    && rm /opt/venv/bin/imagesearch /opt/venv/bin/imagesearch-search \
    && /opt/venv/bin/pip uninstall --yes onnxruntime \
    && /opt/venv/bin/pip install "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${CUDA_IMAGE} AS runtime
# pyproject.toml's version: --build-arg VERSION=$(make version)
ARG VERSION
LABEL org.opencontainers.image.title="imagesearch-extractor-gpu" \
      org.opencontainers.image.description="Semantic image search: CNN embeddings over gRPC (CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 imagesearch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin imagesearch
COPY --from=build /opt/venv /opt/venv
COPY --from=model / /opt/imagesearch/model/
COPY deploy/docker/healthcheck.py /opt/imagesearch/healthcheck.py
# TensorRT is not in this image: name the providers, or the default list would try it first.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EXTRACTOR_HOST=0.0.0.0 \
    EXTRACTOR_PORT=50051 \
    EXTRACTOR_METRICS_PORT=9090 \
    EXTRACTOR_MODEL_DIR=/opt/imagesearch/model \
    EXTRACTOR_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
# The GPU build really is the one installed, and the model matches its manifest.
RUN ["/opt/venv/bin/python", "-c", "import pathlib, onnxruntime; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers(), onnxruntime.get_available_providers(); from extractor_service.manifest import load_manifest, verify_checksum; d = pathlib.Path('/opt/imagesearch/model'); m = load_manifest(d); verify_checksum(d, m); print('model', m.name, m.version, 'sha256 verified')"]
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/imagesearch/healthcheck.py", "EXTRACTOR_PORT"]
ENTRYPOINT ["/opt/venv/bin/imagesearch-extractor"]
