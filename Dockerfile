# syntax=docker/dockerfile:1
# One image for every service (API, worker, dashboard): the same package the tests install, `pip install .`.
#
# TORCH_INDEX_URL chooses the torch build and nothing else:
#   https://download.pytorch.org/whl/cpu  CPU-only wheels (small): the API and the dashboard, which never
#                                         run a model (docker-compose.yml tags this velora-bench:cpu)
#   https://pypi.org/simple               PyPI's Linux wheels, which bundle CUDA: GPU workers (velora-bench:cuda).
#                                         The host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VELORA_DATA_DIR=/data \
    VELORA_ARTIFACT_DIR=/artifacts \
    HF_HOME=/artifacts/huggingface

# An unprivileged user owns the data and artifact directories (named volumes take their ownership).
RUN useradd --create-home --uid 1000 velora && mkdir -p /data /artifacts && chown velora:velora /data /artifacts

# torch first, from the chosen index, so that installing the package below keeps it (and this layer
# is reused when only the code changes).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY . /app
RUN pip install /app

USER velora
EXPOSE 8000 8501
# docker-compose.yml gives each service its command; this one lists them.
CMD ["velora-bench", "--help"]
