# syntax=docker/dockerfile:1
# The search service: Python and the `search` extra (asyncpg, numpy); no compilers, no
# pip, no torch; runs as an unprivileged user. It applies its schema migrations at start
# (CREATE EXTENSION cube included), so its database role must own the database.
#
# Build from the repository root (BuildKit; the ignore file beside this one applies):
#   docker build -f deploy/docker/search.Dockerfile -t imagesearch-search:$(make version) .

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# At the versions constraints.txt pins (`make lock`). The context holds no package but
# search_service and what it imports; the console scripts of the other roles go. pip
# compiles the installed modules, so nothing is written at run time (read-only root).
RUN /opt/venv/bin/pip install --constraint=constraints.txt ".[search]" \
    && rm /opt/venv/bin/imagesearch /opt/venv/bin/imagesearch-extractor \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
# pyproject.toml's version: --build-arg VERSION=$(make version)
ARG VERSION
LABEL org.opencontainers.image.title="imagesearch-search" \
      org.opencontainers.image.description="Semantic image search: vectors in PostgreSQL, over gRPC" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 imagesearch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin imagesearch
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/imagesearch/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEARCH_HOST=0.0.0.0 \
    SEARCH_PORT=50052 \
    SEARCH_METRICS_PORT=9090
# The migrations ship inside the package; a missing one would only show at start-up.
RUN ["/opt/venv/bin/python", "-c", "from search_service.schema import available; found = available(); assert found, 'no migrations packaged'; print(len(found), 'migrations packaged')"]
USER 10001:10001
EXPOSE 50052 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/imagesearch/healthcheck.py", "SEARCH_PORT"]
ENTRYPOINT ["/opt/venv/bin/imagesearch-search"]
