# syntax=docker/dockerfile:1
# Images of qwen3-trainer (not built in CI here: no Docker engine on these machines).
#
#   docker build --target trainer  -t ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0 .   # PyTorchJobs + flow runs
#   docker build --target tracking -t ghcr.io/qwen3-trainer/mlflow:3.17.2 .         # the MLflow server
#
# trainer: the CUDA torch 2.11 image (torch 2.11.0+cu130 is what the GPU machines run, and what
# torchtitan 0.2.2 trains on) plus this package. torch is held at the base image's version with a
# constraint, so installing the package never swaps in another multi-GB torch build.

ARG TORCH_IMAGE=pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${TORCH_IMAGE} AS trainer
ARG TORCH_VERSION=2.11.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -c "import torch, sys; v = torch.__version__.split('+')[0]; \
sys.exit(0 if v == '${TORCH_VERSION}' else f'base image has torch {v}, want ${TORCH_VERSION}')"
WORKDIR /opt/qwen3-trainer
COPY pyproject.toml README.md ./
COPY __init__.py ./
COPY model ./model
COPY platform ./platform
COPY workflows ./workflows
COPY cli ./cli
COPY recipe ./recipe
# the float8 extra (torchao): `float8: true` runs in this image
RUN echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt \
 && pip install -c /tmp/torch-constraint.txt ".[float8]" \
 && python -c "import torch, torchao, qwen3_trainer.model, qwen3_trainer.workflows.flows; assert torch.__version__.startswith('${TORCH_VERSION}')" \
 && qtrain --help > /dev/null
# The chart's pods run as uid 10001 with a read-only root filesystem; HOME and caches live on /tmp.
RUN useradd --uid 10001 --gid 0 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin qwen3
ENV HOME=/tmp \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor \
    HF_HOME=/tmp/hf
USER 10001
WORKDIR /tmp
CMD ["qtrain", "--help"]

FROM ${PYTHON_IMAGE} AS tracking
# The official MLflow image lacks the PostgreSQL driver and boto3 (mlflow/mlflow#9513).
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.8 \
 && useradd --uid 10001 --gid 0 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mlflow
ENV HOME=/tmp PYTHONUNBUFFERED=1
USER 10001
WORKDIR /tmp
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
