"""Request dependencies: settings, catalog, database session, the calling key.

Routes that need a key use `KeyedRoute`, which authenticates before FastAPI reads the
request body: a caller without a valid key gets its 401 without the API reading, parsing or
holding what it sent.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from llmq.announce import Announcer
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.errors import Unauthorized
from llmq.files.store import FileStore
from llmq.keys import Caller, authenticate
from llmq.settings import Settings

bearer = HTTPBearer(auto_error=False)


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in its
# thread pool, a hop per dependency per request.


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def file_store(request: Request) -> FileStore:
    return request.app.state.file_store


def announcer(request: Request) -> Announcer:
    """What follows a route's commit, through the app's shared clients."""
    state = request.app.state
    return Announcer(state.sync_redis, state.celery, state.settings.redis_prefix, state.limit_redis)


def bearer_key(request: Request) -> str | None:
    """The plain key in `Authorization: Bearer <key>`, if the request sent one."""
    scheme, key = get_authorization_scheme_param(request.headers.get("authorization"))
    return key if key and scheme.lower() == "bearer" else None


def authenticate_request(request: Request) -> Caller:
    """The key in `Authorization: Bearer <key>`, looked up once per request (in this
    process's key cache, `llmq.key_cache`, else in Postgres)."""
    known: Caller | None = getattr(request.state, "caller", None)
    if known is not None:
        return known
    key = bearer_key(request)
    if key is None:
        raise Unauthorized("missing bearer API key (Authorization: Bearer <key>)")
    request.state.caller = request.app.state.key_cache.authenticate(key, lookup)
    return request.state.caller


def cached_caller(request: Request) -> Caller | None:
    """The key of the request if this process's key cache answers at once (no I/O that may
    wait); None leaves it to `authenticate_request`, in a thread."""
    key = bearer_key(request)
    if key is None:
        return None
    caller = request.app.state.key_cache.cached(key)
    if caller is not None:
        request.state.caller = caller
    return caller


def lookup(plain: str) -> Caller:
    with session_scope() as db:
        return authenticate(db, plain)


async def caller(
    request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Caller:
    """The calling key (`bearer` only documents the scheme in the OpenAPI schema); a
    `KeyedRoute` has found it already."""
    known: Caller | None = getattr(request.state, "caller", None)
    return known if known is not None else await run_in_threadpool(authenticate_request, request)


def needs_caller(dependant: Dependant) -> bool:
    return any(d.call is caller or needs_caller(d) for d in dependant.dependencies)


class KeyedRoute(APIRoute):
    """A route that authenticates the caller before its body is read.

    FastAPI reads and parses the body before it solves dependencies, so without this an
    unauthenticated request could make the API read a whole (bulk-sized) body first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not needs_caller(self.dependant):
            return handler

        async def authenticated_first(request: Request) -> Response:
            if cached_caller(request) is None:
                await run_in_threadpool(authenticate_request, request)
            return await handler(request)

        return authenticated_first
