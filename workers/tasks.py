"""Celery tasks. The message carries only the job id; the prompt stays in Postgres.

`register_tasks` puts them on the worker's app; they reach the model through the process's
runtime, handed in, so this module imports neither.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery

from llmq.queues import GENERATE_TASK, display_name
from llmq.settings import get_settings

RETRY_DELAYS_S = (2, 5, 15, 30, 60)


class Runtime(Protocol):
    """What the tasks need of the worker process (`workers.app.Runtime`)."""

    model: str
    runner: Any  # the runner once the model is loaded; None before


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Define the worker's tasks on `app`, each serving through `runtime`'s runner."""

    def _shadow_name(task, args, kwargs, options) -> str | None:
        """A retry, sent from the worker, keeps the name Flower showed: `llmq.generate:<model>`."""
        return display_name(runtime.model) if runtime.runner is not None else None

    @app.task(
        name=GENERATE_TASK, bind=True, max_retries=len(RETRY_DELAYS_S), shadow_name=_shadow_name
    )
    def generate(self, job_id: str) -> str:
        """Hand the job to the engine thread and wait for its batch to be written."""
        if runtime.runner is None:
            raise RuntimeError("no model loaded in this worker")
        future = runtime.runner.submit(job_id)
        try:
            # At worst the job waits behind one batch, then runs in the next.
            return future.result(timeout=2 * get_settings().max_generation_s + 60)
        except Exception as exc:  # the batch could not be written, or this engine stopped
            delay = RETRY_DELAYS_S[min(self.request.retries, len(RETRY_DELAYS_S) - 1)]
            raise self.retry(exc=exc, countdown=delay) from exc
