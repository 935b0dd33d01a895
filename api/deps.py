"""Request dependencies: settings, catalog, database session, the calling key."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.errors import Unauthorized
from llmq.keys import Caller, authenticate
from llmq.settings import Settings

bearer = HTTPBearer(auto_error=False)


def settings(request: Request) -> Settings:
    return request.app.state.settings


def catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer API key (Authorization: Bearer <key>)")
    with session_scope() as db:
        return authenticate(db, credentials.credentials)
