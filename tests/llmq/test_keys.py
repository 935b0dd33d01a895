"""API keys: format and checksum, revoke, admin routes, CLI, encrypted webhook secrets."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from llmq import keys
from llmq.key_cache import announce_changed
from tests.conftest import REDIS_PREFIX, make_key


def test_keys_have_prefix_checksum_and_enough_entropy():
    plain = keys.new_plain_key()
    assert plain.startswith("llmq_") and len(plain) == keys.KEY_LENGTH
    assert keys.well_formed(plain)
    # 32 base62 characters: 32 * log2(62) > 190 bits from `secrets`.
    assert len({keys.new_plain_key() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "llmq_",
        "sk_live_abcdef",
        "llmq_" + "a" * 38,  # right length, wrong checksum
        "llmq_" + "a" * 32 + "!!!!!!",
    ],
)
def test_malformed_keys_fail_the_format_check(bad):
    assert not keys.well_formed(bad)


def test_a_flipped_character_breaks_the_checksum():
    plain = keys.new_plain_key()
    i = len(keys.KEY_PREFIX) + 3
    flipped = plain[:i] + ("b" if plain[i] != "b" else "c") + plain[i + 1 :]
    assert not keys.well_formed(flipped)


def test_a_bad_checksum_is_refused_without_a_database_query(client):
    from llmq.db import get_engine

    random_part = "A" * keys.RANDOM_CHARS
    forged = (
        keys.KEY_PREFIX
        + random_part
        + ("0" * 6 if keys.checksum(random_part) != "0" * 6 else "1" * 6)
    )
    queries: list[str] = []

    def count(conn, cursor, statement, *args):
        queries.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"})
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert queries == []


def test_a_revoked_key_fails_at_once(client):
    plain = make_key("to-revoke")
    headers = {"Authorization": f"Bearer {plain}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    from llmq.db import session_scope

    with session_scope() as session:
        row = keys.revoke_key(session, plain[: keys.DISPLAY_PREFIX_CHARS])
    announce_changed(client.app.state.sync_redis, REDIS_PREFIX, row.id)  # as every revoker does
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_admin_routes_need_an_admin_key(client, auth):
    response = client.get("/v1/admin/keys", headers=auth)
    assert response.status_code == 403
    assert response.json()["status"] == 403


def test_admin_creates_lists_and_revokes_keys(client):
    admin = {"Authorization": f"Bearer {make_key('root', admin=True)}"}
    created = client.post(
        "/v1/admin/keys",
        json={"name": "team-a", "rpm": 60, "tpm": 5000, "max_concurrent": 3,
              "budget_usd": "12.50", "budget_period": "month", "fair_share_weight": 2.5},
        headers=admin,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    assert keys.well_formed(body["key"]) and body["webhook_secret"].startswith("whsec_")
    assert (body["rpm"], body["tpm"], body["max_concurrent"]) == (60, 5000, 3)
    assert (body["budget_usd"], body["budget_period"]) == ("12.5", "month")
    assert body["fair_share_weight"] == 2.5
    listed = client.get("/v1/admin/keys", headers=admin).json()["data"]
    mine = next(k for k in listed if k["id"] == body["id"])
    assert "key" not in mine and "webhook_secret" not in mine and mine["revoked_at"] is None
    new_auth = {"Authorization": f"Bearer {body['key']}"}
    assert client.get("/v1/jobs", headers=new_auth).status_code == 200
    revoked = client.post(f"/v1/admin/keys/{body['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert client.get("/v1/jobs", headers=new_auth).status_code == 401


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x", "budget_usd": "5"}, "budget_usd"),
        ({"name": "x", "budget_usd": "5", "budget_period": "week"}, "budget_period"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "fair_share_weight": 0}, "fair_share_weight"),
        # Limits are Postgres integers: a larger number is a 422, not a failed insert.
        ({"name": "x", "rpm": 2**31}, "rpm"),
        ({"name": "x", "tpm": 10**35}, "tpm"),
        ({"name": "x", "max_concurrent": 2**31}, "max_concurrent"),
        ({"name": "x", "webhook_url": "http://169.254.169.254/latest"}, "webhook_url"),
    ],
)
def test_admin_key_creation_refuses_bad_fields(client, body, field):
    admin = {"Authorization": f"Bearer {make_key('root2', admin=True)}"}
    response = client.post("/v1/admin/keys", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


def test_webhook_secrets_are_random_unique_and_encrypted_at_rest():
    from llmq import crypto
    from llmq.db import session_scope
    from llmq.models import ApiKey

    secrets_ = [crypto.new_webhook_secret() for _ in range(2000)]
    assert len(set(secrets_)) == len(secrets_)
    assert all(len(base64.b64decode(s.removeprefix("whsec_"))) >= 24 for s in secrets_)
    with session_scope() as session:
        row, _ = keys.create_key(session, "secretive")
        secret = keys.webhook_secret(row)
        stored = session.scalar(sa.select(ApiKey.webhook_secret_enc).where(ApiKey.id == row.id))
    assert secret.startswith("whsec_")
    assert secret not in stored and secret.removeprefix("whsec_") not in stored


def test_cli_creates_lists_and_revokes_keys():
    def llmq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "400"},
        )

    made = llmq("keys", "create", "--name", "cli-key", "--rpm", "10", "--budget-usd", "3",
                "--budget-period", "day")  # fmt: skip
    assert made.returncode == 0, made.stderr + made.stdout
    plain = next(line for line in made.stdout.splitlines() if line.startswith("llmq_"))
    assert keys.well_formed(plain)
    listed = llmq("keys", "list")
    assert listed.returncode == 0 and "cli-key" in listed.stdout
    assert plain not in listed.stdout
    prefix = plain[: keys.DISPLAY_PREFIX_CHARS]
    revoked = llmq("keys", "revoke", prefix)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    bad = llmq("keys", "create", "--name", "x", "--budget-usd", "3")
    assert bad.returncode == 1 and "budget" in bad.stdout
