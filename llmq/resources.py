"""The public shape of a job, shared by the API and the webhook sender (see docs/api.md)."""

from __future__ import annotations

from decimal import Decimal

from llmq.ledger import usd
from llmq.models import Job


def job_resource(job: Job, cost: tuple[Decimal, Decimal] | None, flower_url: str | None) -> dict:
    """The public shape of a job (see docs/api.md)."""
    usage = None
    if job.prompt_tokens is not None:
        usage = {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + (job.completion_tokens or 0),
            "cost_usd": usd(cost[0]) if cost else None,
            "gpu_cost_usd": usd(cost[1]) if cost else None,
        }
    output = None
    if job.output_text is not None:
        output = {"text": job.output_text, "finish_reason": job.finish_reason}
    resource = {
        "id": str(job.id),
        "object": "job",
        "model": job.model,
        "alias": job.alias,
        "variant": job.variant,
        "status": job.status,
        "priority": job.priority,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "output": output,
        "usage": usage,
        "error": job.error,
        "attempts": job.attempts,
        "cached": job.cached,
        "cache_similarity": job.cache_similarity,
        "hops": job.hops or [],
        "pruned_at": _iso(job.pruned_at),
        "expires_at": _iso(job.expires_at),
        "metadata": job.meta or {},
        "user": job.user,
        "timings": {
            "queue_ms": job.queue_ms,
            "inference_ms": job.inference_ms,
            "batch_size": job.batch_size,
        },
    }
    if flower_url:
        resource["links"] = {"flower": f"{flower_url.rstrip('/')}/task/{job.id}"}
    return resource


def _iso(value) -> str | None:
    return value.isoformat() if value else None
