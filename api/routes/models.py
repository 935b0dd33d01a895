"""/v1/models: the catalog in OpenAI's list shape (`id`, `object`, `created`, `owned_by`), each
model with its live queue, its pool as the scheduler sees it and its circuit breaker, then
each alias with its variants and rules (under `llmq`), so a client listing models sees every
name it may send.

`created` is when the catalog file last changed (OpenAI's is when the model was made): every
replica serving the same catalog says the same. Errors here are in OpenAI's envelope.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from api import deps
from api.openapi import openai_responses
from llmq import breakers, events, job_checks
from llmq.catalog import Catalog, ModelSpec
from llmq.db import session_scope
from llmq.keys import Caller
from llmq.pools import observe_pools
from llmq.queues import queue_name
from llmq.routing import Alias
from llmq.settings import Settings

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    route_class=deps.KeyedRoute,
    responses=openai_responses(401, 503),
)
OWNED_BY = "llmq"


def catalog_created(settings: Settings) -> int:
    try:
        return int(Path(settings.catalog_path).stat().st_mtime)
    except OSError:
        return 0


def gather(request: Request, catalog: Catalog, settings: Settings, names: list[str]) -> list[dict]:
    """The models named, each with its live queue and pool."""
    client = request.app.state.sync_redis
    with session_scope() as session:
        seen = observe_pools(session, client, settings.redis_prefix, names)
    pools = events.read_pools(client, settings.redis_prefix)
    circuits = breakers.read_states(
        client, settings.redis_prefix, [catalog.get(name) for name in seen]
    )
    created = catalog_created(settings)
    return [
        model_object(catalog.get(name), live, pools.get(name, {}), created, circuits[name])
        for name, live in seen.items()
    ]


def model_object(spec: ModelSpec, live, pool: dict, created: int, circuit: str) -> dict:
    name = spec.name
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        "description": spec.description,
        "engine": spec.engine,
        "queue": queue_name(name),
        "context_length": spec.context_length,
        "fallbacks": spec.fallbacks,
        "circuit": circuit,  # closed | open | half_open: the model's breaker, shared by all
        "max_new_tokens": spec.max_new_tokens,
        "max_batch_size": spec.max_batch_size,
        "pricing": {
            "input_per_mtok_usd": str(spec.price_input_per_mtok_usd),
            "output_per_mtok_usd": str(spec.price_output_per_mtok_usd),
            "cache_hit_per_mtok_usd": str(spec.price_cache_hit_per_mtok_usd),
            "gpu_hour_usd": str(spec.gpu_hour_usd),
        },
        "pool": {
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "target_backlog_per_replica": spec.target_backlog_per_replica,
            # What the scheduler leader last decided and ran (null: no scheduler)
            "desired_replicas": pool.get("desired_replicas"),
            "actual_replicas": pool.get("actual_replicas"),
            "updated_at": pool.get("updated_at"),
        },
        "live": {
            "waiting": live.waiting,
            "backlog": live.backlog,
            "in_flight": live.in_flight,
            "workers": live.workers,
            "oldest_wait_s": (
                round(live.oldest_wait_s, 3) if live.oldest_wait_s is not None else None
            ),
        },
    }


def alias_object(alias: Alias, created: int) -> dict:
    total = sum(v.weight for v in alias.variants)
    return {
        "id": alias.name,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        "description": alias.description,
        "llmq": {
            "kind": "alias",
            "sticky": alias.sticky,
            "variants": [
                {"name": v.name, "model": v.model, "weight": v.weight, "share": v.weight / total}
                for v in alias.variants
            ],
            "rules": [
                {"name": r.name, "model": r.model, "when": r.when.model_dump(exclude_none=True)}
                for r in alias.rules
            ],
        },
    }


@router.get("")
async def list_models(
    request: Request,
    caller: Caller = Depends(deps.caller),
    catalog: Catalog = Depends(deps.catalog),
    settings: Settings = Depends(deps.settings),
) -> dict:
    data = await run_in_threadpool(gather, request, catalog, settings, catalog.names())
    created = catalog_created(settings)
    data += [alias_object(catalog.aliases[name], created) for name in sorted(catalog.aliases)]
    return {"object": "list", "data": data}


@router.get("/{model_id}", responses=openai_responses(404))
async def get_model(
    model_id: str,
    request: Request,
    caller: Caller = Depends(deps.caller),
    catalog: Catalog = Depends(deps.catalog),
    settings: Settings = Depends(deps.settings),
) -> dict:
    job_checks.check_model(model_id, catalog)
    if model_id in catalog.aliases:
        return alias_object(catalog.aliases[model_id], catalog_created(settings))
    return (await run_in_threadpool(gather, request, catalog, settings, [model_id]))[0]
