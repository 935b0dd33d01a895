"""/v1/models: the catalog, with each model's live queue and its pool as the scheduler sees it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from api import deps
from api.openapi import responses
from llmq import events
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.keys import Caller
from llmq.pools import observe_pools
from llmq.queues import queue_name
from llmq.settings import Settings

router = APIRouter(
    prefix="/v1/models", tags=["models"], route_class=deps.KeyedRoute, responses=responses(401, 503)
)


@router.get("")
async def list_models(
    request: Request,
    caller: Caller = Depends(deps.caller),
    catalog: Catalog = Depends(deps.catalog),
    settings: Settings = Depends(deps.settings),
) -> dict:
    def gather() -> list[dict]:
        client = request.app.state.sync_redis
        with session_scope() as session:
            seen = observe_pools(session, client, settings.redis_prefix, catalog.names())
        pools = events.read_pools(client, settings.redis_prefix)
        data = []
        for name, live in seen.items():
            spec = catalog.get(name)
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "description": spec.description,
                    "engine": spec.engine,
                    "queue": queue_name(name),
                    "context_length": spec.context_length,
                    "max_new_tokens": spec.max_new_tokens,
                    "max_batch_size": spec.max_batch_size,
                    "pricing": {
                        "input_per_mtok_usd": str(spec.price_input_per_mtok_usd),
                        "output_per_mtok_usd": str(spec.price_output_per_mtok_usd),
                        "gpu_hour_usd": str(spec.gpu_hour_usd),
                    },
                    "pool": {
                        "min_replicas": spec.min_replicas,
                        "max_replicas": spec.max_replicas,
                        "target_backlog_per_replica": spec.target_backlog_per_replica,
                        # What the scheduler leader last decided and ran (null: no scheduler)
                        "desired_replicas": pools.get(name, {}).get("desired_replicas"),
                        "actual_replicas": pools.get(name, {}).get("actual_replicas"),
                        "updated_at": pools.get(name, {}).get("updated_at"),
                    },
                    "live": {
                        "waiting": live.waiting,
                        "in_flight": live.in_flight,
                        "workers": live.workers,
                        "oldest_wait_s": (
                            round(live.oldest_wait_s, 3) if live.oldest_wait_s is not None else None
                        ),
                    },
                }
            )
        return data

    return {"object": "list", "data": await run_in_threadpool(gather)}
