"""/v1/admin/keys: create, list and revoke API keys. Admin keys only."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from api import deps
from api.openapi import responses
from llmq import key_cache, keys, ssrf
from llmq.db import session_scope
from llmq.errors import Forbidden, InvalidField
from llmq.keys import Caller
from llmq.settings import Settings

PG_INT_MAX = 2**31 - 1  # the limits are Postgres integer columns

router = APIRouter(
    prefix="/v1/admin/keys",
    tags=["admin"],
    route_class=deps.KeyedRoute,
    responses=responses(401, 403, 422, 503),
)


def admin(caller: Caller = Depends(deps.caller)) -> Caller:
    if not caller.is_admin:
        raise Forbidden("this route needs an admin key")
    return caller


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    admin: bool = False
    rpm: int | None = Field(None, ge=1, le=PG_INT_MAX)
    tpm: int | None = Field(None, ge=1, le=PG_INT_MAX)
    max_concurrent: int | None = Field(None, ge=1, le=PG_INT_MAX)
    budget_usd: Decimal | None = Field(None, gt=0, max_digits=24, decimal_places=12)
    budget_period: Literal["day", "month"] | None = None
    webhook_url: HttpUrl | None = None
    fair_share_weight: float = Field(1.0, gt=0, le=1000)


@router.post("", status_code=201, responses=responses(400, 413))
def create(
    body: KeyCreate,
    _: Caller = Depends(admin),
    settings: Settings = Depends(deps.settings),
) -> dict:
    """The answer holds the key and its webhook signing secret; neither is shown again."""
    webhook_url = str(body.webhook_url) if body.webhook_url else None
    if webhook_url:
        try:
            ssrf.check_url(webhook_url, settings)
        except ssrf.UnsafeUrl as exc:
            raise InvalidField("webhook_url", str(exc)) from None
    limits = keys.Limits(
        body.rpm, body.tpm, body.max_concurrent, body.budget_usd, body.budget_period
    )
    with session_scope() as session:
        row, plain = keys.create_key(
            session, body.name, body.admin, limits, webhook_url, body.fair_share_weight
        )
        resource = keys.describe(row)
        secret = keys.webhook_secret(row)
    return resource | {"key": plain, "webhook_secret": secret}


@router.get("")
def list_keys(_: Caller = Depends(admin)) -> dict:
    with session_scope() as session:
        return {"object": "list", "data": [keys.describe(r) for r in keys.list_keys(session)]}


@router.post("/{key_id}/revoke", responses=responses(404))
def revoke(key_id: str, request: Request, _: Caller = Depends(admin)) -> dict:
    """A revoked key fails authentication on its next request, in every API process: each
    one's key cache drops it when told (`llmq.key_cache`)."""
    with session_scope() as session:
        resource = keys.describe(keys.revoke_key(session, key_id))
    state = request.app.state
    state.key_cache.drop(resource["id"])
    key_cache.announce_changed(state.sync_redis, state.settings.redis_prefix, resource["id"])
    return resource
