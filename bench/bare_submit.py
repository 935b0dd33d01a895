"""The floor under `POST /v1/jobs`: a FastAPI app that does only what any submit must do.

One INSERT of a jobs-like row (in its own transaction) and one Redis LPUSH of the id, behind
the same uvicorn, Postgres and Redis as the API. `bench.submit_path` serves both and compares.
Run: `uvicorn --factory bench.bare_submit:create_app`.
"""

from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager

import redis
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import BaseModel

from llmq.db import get_engine
from llmq.settings import get_settings

TABLE = "bench_bare_jobs"
CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id uuid PRIMARY KEY,
    model text NOT NULL,
    prompt text NOT NULL,
    params jsonb NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT = sa.text(
    f"INSERT INTO {TABLE} (id, model, prompt, params) VALUES (:id, :model, :prompt, :params)"
)


class Body(BaseModel):
    model: str
    prompt: str
    max_tokens: int | None = None


def queue_key(prefix: str) -> str:
    return f"{prefix}bench:bare"


def create_table(engine: sa.Engine) -> None:
    """Once per run, before the bare app starts (its worker processes must not race to it)."""
    with engine.begin() as conn:
        conn.execute(sa.text(CREATE))


def create_app() -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.redis = redis.Redis.from_url(settings.redis_url)
        yield
        app.state.redis.close()

    app = FastAPI(lifespan=lifespan)
    key = queue_key(settings.redis_prefix)

    @app.post("/submit", status_code=202)
    def submit(body: Body) -> dict:
        job_id = uuid.uuid4()
        params = json.dumps({"max_tokens": body.max_tokens})
        with get_engine().begin() as conn:
            conn.execute(
                INSERT, {"id": job_id, "model": body.model, "prompt": body.prompt, "params": params}
            )
        app.state.redis.lpush(key, str(job_id))
        return {"id": str(job_id), "status": "queued"}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ok"}

    return app
