"""Celery tasks. The message carries only the job id; the prompt stays in Postgres."""

from __future__ import annotations

from llmq.queues import GENERATE_TASK
from llmq.settings import get_settings
from workers.app import app, runtime

RETRY_DELAYS_S = (2, 5, 15, 30, 60)


@app.task(name=GENERATE_TASK, bind=True, max_retries=len(RETRY_DELAYS_S))
def generate(self, job_id: str) -> str:
    """Hand the job to the engine thread and wait for its batch to be written."""
    if runtime.runner is None:
        raise RuntimeError("no model loaded in this worker")
    future = runtime.runner.submit(job_id)
    try:
        # At worst the job waits behind one batch, then runs in the next.
        return future.result(timeout=2 * get_settings().max_generation_s + 60)
    except Exception as exc:  # the batch could not be written (database or broker down)
        delay = RETRY_DELAYS_S[min(self.request.retries, len(RETRY_DELAYS_S) - 1)]
        raise self.retry(exc=exc, countdown=delay) from exc
