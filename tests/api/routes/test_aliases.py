"""Aliases through a real API process: every submit route resolves one to a model before the
job exists, the job and its ledger row keep the alias and variant, `/v1/models` lists them,
and `/v1/usage?group_by=variant` reports each variant (see `[aliases.*]` in the test catalog).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import openai
import pytest
import sqlalchemy as sa

from llmq.catalog import get_catalog
from llmq.db import session_scope
from llmq.models import Job, LedgerEntry
from llmq.routing import Facts, route
from tests.api.routes import test_chat
from tests.conftest import WorkerProcess, make_key, serving, wait_final
from tests.tenancy_helpers import ApiServer

api, echo_worker = test_chat.api, test_chat.echo_worker  # the same fixtures


@pytest.fixture(scope="module")
def priced_worker(environment) -> Iterator[WorkerProcess]:
    yield from serving("echo-priced")


def post(api: ApiServer, key: str, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{api.url}{path}", json=body, headers=headers, timeout=60)


def get(api: ApiServer, key: str, path: str, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{api.url}{path}", params=params, headers=headers, timeout=60)


def job(alias: str = "ab-split", prompt: str = "hello there", **fields) -> dict:
    return {"model": alias, "prompt": prompt, "max_tokens": 4, **fields}


def variants_of(ids: list[str]) -> Counter:
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.variant, Job.model).where(Job.id.in_([uuid.UUID(i) for i in ids]))
        ).all()
    return Counter(rows)


def test_an_alias_splits_a_thousand_users_as_its_weights_say(api):
    body = {"jobs": [job(user=f"user-{i}") for i in range(1000)]}
    response = post(api, make_key("split"), "/v1/jobs/bulk", body)
    assert response.status_code == 202, response.text
    counts = variants_of(response.json()["ids"])
    assert set(counts) == {("control", "split-a"), ("candidate", "split-b")}
    assert abs(counts["control", "split-a"] / 1000 - 0.7) <= 0.03  # weights 70/30


def test_a_user_keeps_their_variant_across_requests(api):
    key = make_key("sticky")
    spec = get_catalog().aliases["ab-split"]
    expected = route(spec, Facts("", "ann")).variant
    model = next(v.model for v in spec.variants if v.name == expected)
    ids = [post(api, key, "/v1/jobs", job(user="ann")).json()["id"] for _ in range(5)]
    bulk = post(api, key, "/v1/jobs/bulk", {"jobs": [job(user="ann")] * 5}).json()["ids"]
    assert set(variants_of(ids + bulk)) == {(expected, model)}
    one = post(api, key, "/v1/jobs", job(user="ann")).json()
    assert (one["alias"], one["variant"]) == ("ab-split", expected)
    assert one["model"] in ("split-a", "split-b")


def test_sticky_per_key_gives_one_key_one_variant(api):
    seen = set()
    for _ in range(20):
        key = make_key("per-key")
        bulk = {"jobs": [job("ab-key", user=f"u{i}") for i in range(10)]}
        counts = variants_of(post(api, key, "/v1/jobs/bulk", bulk).json()["ids"])
        assert len(counts) == 1  # the users differ; the key decides
        seen |= {variant for variant, _ in counts}
    assert seen == {"control", "candidate"}  # 20 keys at 1:1: both, but for 1 in 500,000


@pytest.mark.parametrize(
    ("fields", "picked"),
    [
        ({"prompt": "please ESCALATE this"}, ("escalated", "split-b")),
        ({"prompt": "word " * 200}, ("long", "split-b")),  # 1000 bytes: about 250 tokens
        ({"metadata": {"tier": "gold"}}, ("rule-3", "split-a")),
    ],
)
def test_a_rule_overrides_the_split(api, fields, picked):
    key = make_key("rules")
    body = {"jobs": [job(user=f"rule-user-{i}", **fields) for i in range(20)]}
    assert variants_of(post(api, key, "/v1/jobs/bulk", body).json()["ids"]) == {picked: 20}


def test_aliases_are_listed_as_models_and_unknown_names_are_refused_as_before(api):
    sdk = openai.OpenAI(base_url=f"{api.url}/v1", api_key=make_key("list"), max_retries=0)
    models = {m.id: m for m in sdk.models.list()}
    assert {"echo", "ab-split", "ab-echo"} <= set(models)
    split = models["ab-split"].model_extra["llmq"]
    assert split["kind"] == "alias" and split["sticky"] == "user"
    assert [(v["name"], v["model"], v["share"]) for v in split["variants"]] == [
        ("control", "split-a", 0.7),
        ("candidate", "split-b", 0.3),
    ]
    assert split["rules"][0] == {"name": "escalated", "model": "split-b",
                                 "when": {"keyword": "escalate"}}  # fmt: skip
    assert sdk.models.retrieve("ab-split").model_extra["llmq"] == split
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("ab-nope")
    missing = post(api, make_key("nope"), "/v1/jobs", job("ab-nope"))
    assert missing.status_code == 422 and "unknown model 'ab-nope'" in missing.text


def users_by_variant(alias: str, count: int) -> dict[str, list[str]]:
    """`count` users that the alias sends to each of its variants."""
    spec = get_catalog().aliases[alias]
    found: dict[str, list[str]] = {v.name: [] for v in spec.variants}
    i = 0
    while any(len(users) < count for users in found.values()):
        user = f"run-{i}"
        users = found[route(spec, Facts("", user)).variant]
        if len(users) < count:
            users.append(user)
        i += 1
    return found


def test_jobs_run_on_both_variants_and_the_report_shows_them(api, echo_worker, priced_worker):
    key = make_key("report")
    users = users_by_variant("ab-echo", 4)
    ids = [
        post(api, key, "/v1/jobs", job("ab-echo", "one two three four", user=u)).json()["id"]
        for u in users["control"] + users["candidate"]
    ]
    sdk = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    chat = sdk.chat.completions.create(
        model="ab-echo", messages=[{"role": "user", "content": "hi you"}], max_tokens=2,
        user=users["candidate"][0],
    )  # fmt: skip
    assert chat.model == "echo-priced"  # the model that answered
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api.url, timeout=60) as http:
        ended = [wait_final(http, auth, i) for i in ids]
    assert {j["status"] for j in ended} == {"succeeded"}
    uuids = [uuid.UUID(i) for i in ids]
    with session_scope() as session:
        rows = session.execute(
            sa.select(LedgerEntry.alias, LedgerEntry.variant, LedgerEntry.model).where(
                LedgerEntry.job_id.in_(uuids)
            )
        ).all()
    ledger = Counter(rows)
    assert ledger == {("ab-echo", "control", "echo"): 4, ("ab-echo", "candidate", "echo-priced"): 4}

    report = get(api, key, "/v1/usage", group_by="variant", alias="ab-echo").json()
    rows = {r["variant"]: r for r in report["data"]}
    assert set(rows) == {"control", "candidate"}
    assert (rows["control"]["jobs"], rows["candidate"]["jobs"]) == (4, 5)  # and the chat's job
    for row in rows.values():
        assert row["alias"] == "ab-echo" and row["failed"] == 0 and row["failure_rate"] == 0
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["latency_p50_ms"] is not None
        assert row["latency_p95_ms"] >= row["latency_p50_ms"]
    assert rows["control"]["cost_usd"] == "0" and float(rows["candidate"]["cost_usd"]) > 0
    assert report["total"]["jobs"] == 9
    csv = get(api, key, "/v1/usage", group_by="variant", format="csv").text.splitlines()
    assert csv[0].startswith("alias,variant,model,jobs,failed,failure_rate") and len(csv) == 3
    # another key sees none of it
    assert get(api, make_key("other"), "/v1/usage", group_by="variant").json()["data"] == []
