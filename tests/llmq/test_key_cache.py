"""The key cache: an API process answers for a key without Postgres, yet a revoked key is
refused at once by every process (real Redis, two app instances)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from llmq import keys
from llmq.db import session_scope
from llmq.key_cache import KeyCache, announce_changed, subscriber_client
from llmq.settings import get_settings
from tests.conftest import REDIS_PREFIX, REDIS_URL, make_key


@pytest.fixture
def two_apps(environment) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API apps with their own caches, as two API processes have."""
    from api.app import create_app

    settings = get_settings().model_copy(update={"auth_cache_ttl_s": 3600})
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        yield a, b


def revoke_quietly(plain: str) -> keys.ApiKey:
    """Revoke in Postgres and tell no one: only a cache that answers still accepts the key."""
    with session_scope() as session:
        return keys.revoke_key(session, plain[: keys.DISPLAY_PREFIX_CHARS])


def warm(client: TestClient, headers: dict[str, str]) -> None:
    """Requests until the cache holds the key (the first may come before its subscription)."""
    for _ in range(3):
        assert client.get("/v1/jobs", headers=headers).status_code == 200


def test_a_key_revoked_through_one_process_is_refused_at_once_by_another(two_apps):
    a, b = two_apps
    admin = {"Authorization": f"Bearer {make_key('root', admin=True)}"}
    plain = make_key("cached")
    headers = {"Authorization": f"Bearer {plain}"}
    warm(b, headers)
    key_id = a.get("/v1/admin/keys", headers=admin).json()["data"][-1]["id"]
    assert a.post(f"/v1/admin/keys/{key_id}/revoke", headers=admin).status_code == 200
    response = b.get("/v1/jobs", headers=headers)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert a.get("/v1/jobs", headers=headers).status_code == 401


def test_the_cache_answers_until_the_change_is_announced(two_apps):
    _, b = two_apps
    plain = make_key("quiet")
    headers = {"Authorization": f"Bearer {plain}"}
    warm(b, headers)
    row = revoke_quietly(plain)
    assert b.get("/v1/jobs", headers=headers).status_code == 200  # from the cache
    announce_changed(b.app.state.sync_redis, REDIS_PREFIX, row.id)
    assert b.get("/v1/jobs", headers=headers).status_code == 401


def caller(plain: str) -> keys.Caller:
    with session_scope() as session:
        return keys.authenticate(session, plain)


def test_a_lookup_that_a_change_overtook_is_not_kept(environment):
    cache = KeyCache(subscriber_client(REDIS_URL), REDIS_PREFIX, 3600)
    plain = make_key("raced")
    lookups = []

    def changed_meanwhile(p: str) -> keys.Caller:
        found = caller(p)
        lookups.append(found)
        announce_changed(cache.client, REDIS_PREFIX, found.key_id)  # lands during the lookup
        return found

    try:
        cache.authenticate(make_key("first"), caller)  # subscribes
        for _ in range(3):
            cache.authenticate(plain, changed_meanwhile)
        assert len(lookups) == 3
    finally:
        cache.close()


def test_without_its_subscription_the_cache_never_answers(environment):
    dead = subscriber_client("redis://127.0.0.1:1/0")  # nothing listens there
    cache = KeyCache(dead, REDIS_PREFIX, 3600)
    plain = make_key("uncached")
    lookups = []

    def counted(p: str) -> keys.Caller:
        lookups.append(p)
        return caller(p)

    for _ in range(3):
        cache.authenticate(plain, counted)
    assert len(lookups) == 3
