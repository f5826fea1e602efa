# syntax=docker/dockerfile:1
# Two images from one file, each installing the package with the extras of its jobs (pyproject.toml):
#   --target service  `pip install '.[service]'`: the dashboard, which never runs a model, so no torch
#                     (docker-compose.yml tags it velora-bench:service; an API on it answers POST /fit 503)
#   --target engine   torch, then `pip install '.[service,engine]'`: the workers, and the API, whose
#                     POST /fit predicts with torch on its CPU (velora-bench:cuda)
#
# TORCH_INDEX_URL chooses the engine's torch build and nothing else:
#   https://pypi.org/simple               PyPI's Linux wheels, which bundle CUDA: GPU workers.
#                                         The host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
#   https://download.pytorch.org/whl/cpu  CPU-only wheels (small): CPU workers.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VELORA_DATA_DIR=/data \
    VELORA_ARTIFACT_DIR=/artifacts \
    HF_HOME=/artifacts/huggingface

# An unprivileged user owns the data and artifact directories (named volumes take their ownership).
RUN useradd --create-home --uid 1000 velora && mkdir -p /data /artifacts && chown velora:velora /data /artifacts
WORKDIR /app
EXPOSE 8000 8501
# docker-compose.yml gives each service its command; this one lists them.
CMD ["velora-bench", "--help"]


FROM base AS service
COPY . /app
RUN pip install "/app[service]"
USER velora


FROM base AS engine
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# torch first, from the chosen index, so that installing the package below keeps it (and this layer
# is reused when only the code changes).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY . /app
RUN pip install "/app[service,engine]"
USER velora
