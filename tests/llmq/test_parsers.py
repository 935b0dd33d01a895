"""Property tests for the pure parsers: any input gives a value or the one error meant for it.

Hypothesis generates the inputs; a parser that raises anything else would be a 500 (API
side) or a crashed task (worker side).
"""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.fields import field_path
from api.schemas import JobCreate
from llmq import events, idempotency, keys
from llmq.errors import BadRequest, InvalidField
from llmq.job_queries import decode_cursor, encode_cursor
from llmq.models import Job
from workers.webhook_policy import MAX_RETRY_AFTER_S, next_step, parse_retry_after

NOW = datetime(2026, 1, 1, tzinfo=UTC)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


# --- the pagination cursor ---


@given(created=aware_datetimes, job_id=st.uuids())
def test_a_cursor_decodes_to_the_job_it_was_made_from(created, job_id):
    cursor = encode_cursor(Job(created_at=created, id=job_id))
    assert set(cursor) <= set(string.ascii_letters + string.digits + "-_")
    assert decode_cursor(cursor) == (created, job_id)


@given(st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_a_garbage_cursor_is_an_invalid_field_or_a_position(garbage):
    try:
        created, job_id = decode_cursor(garbage)
    except InvalidField as exc:
        assert exc.field == "cursor"
    else:
        assert isinstance(created, datetime) and isinstance(job_id, uuid.UUID)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cursor=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
    | st.builds(
        lambda when, job_id: encode_cursor(Job(created_at=when, id=job_id)),
        st.datetimes(timezones=st.timezones()),
        st.uuids(),
    )
)
def test_any_cursor_on_the_list_route_is_a_page_or_a_422(client, auth, cursor):
    response = client.get("/v1/jobs", params={"cursor": cursor}, headers=auth)
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["errors"][0]["field"] == "cursor"


# --- stop sequences and metadata (the submit body's own limits) ---


def _submit(**fields) -> JobCreate:
    return JobCreate.model_validate({"model": "echo", "prompt": "hi", **fields})


@given(stop=json_values)
def test_stop_is_up_to_four_short_strings_or_a_validation_error(stop):
    try:
        body = _submit(stop=stop)
    except ValidationError as exc:
        assert {e["loc"][0] for e in exc.errors()} == {"stop"}
        return
    assert body.stop == ([stop] if isinstance(stop, str) else stop or [])
    for sequence in body.stop:
        assert 1 <= len(sequence) <= 200 and "\x00" not in sequence
    assert len(body.stop) <= 4


@given(metadata=st.dictionaries(st.text(max_size=80), json_values, max_size=20))
def test_metadata_holds_only_bounded_flat_scalars(metadata):
    try:
        body = _submit(metadata=metadata)
    except ValidationError as exc:
        assert {e["loc"][0] for e in exc.errors()} == {"metadata"}
        return
    assert len(body.metadata) <= 16
    for key, value in body.metadata.items():
        assert 1 <= len(key) <= 64 and "\x00" not in key
        assert value is None or isinstance(value, str | int | float | bool)
        if isinstance(value, str):
            assert len(value) <= 512 and "\x00" not in value
        if isinstance(value, float):
            assert value == value and abs(value) != float("inf")


@pytest.mark.parametrize("nested", [{"a": {"b": 1}}, {"a": [1]}, {"a": float("nan")}])
def test_metadata_refuses_nesting_and_non_finite_numbers(nested):
    with pytest.raises(ValidationError):
        _submit(metadata=nested)


# --- headers ---

tokens = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@given(key=tokens.filter(lambda k: '"' not in k and "\\" not in k and len(k) <= 255))
def test_an_idempotency_key_round_trips_bare_or_quoted(key):
    assert idempotency.parse_header(key) == key
    assert idempotency.parse_header(f'"{key}"') == key


@given(raw=st.text())
def test_any_idempotency_header_is_a_key_or_a_400(raw):
    try:
        key = idempotency.parse_header(raw)
    except BadRequest as exc:
        assert exc.field == idempotency.HEADER
        return
    assert key is not None and 1 <= len(key) <= idempotency.MAX_KEY_CHARS
    assert all(0x20 < ord(c) < 0x7F and c not in '"\\' for c in key)


@given(plain=st.text())
def test_any_bearer_string_is_checked_without_raising(plain):
    assert keys.well_formed(plain) in (True, False)


@given(value=st.text() | st.none())
def test_retry_after_is_none_or_a_delay_never_an_error(value):
    delay_s = parse_retry_after(value, NOW)
    assert delay_s is None or delay_s >= 0
    step = next_step(503, 1, [1.0], 0.0, 0.5, delay_s)
    assert 0 <= step.delay_s <= MAX_RETRY_AFTER_S


@given(when=aware_datetimes)
def test_retry_after_reads_an_http_date(when):
    from email.utils import format_datetime

    delay_s = parse_retry_after(format_datetime(when, usegmt=True), NOW)
    expected = max(0.0, (when.replace(microsecond=0) - NOW).total_seconds())
    assert delay_s == pytest.approx(expected)


def test_retry_after_in_non_ascii_digits_is_ignored():
    assert parse_retry_after("²", NOW) is None
    assert parse_retry_after("120", NOW) == 120.0


# --- messages between processes, and error field names ---


@given(data=st.binary() | st.text())
def test_any_pubsub_message_is_done_or_not(data):
    assert events.is_done(data) in (True, False)


@given(
    loc=st.lists(
        st.sampled_from(["body", "query", "path", "header"]) | st.text() | st.integers(0, 99),
        max_size=6,
    )
)
def test_an_error_location_always_names_a_field(loc):
    name = field_path(tuple(loc))
    assert isinstance(name, str) and name


def test_an_error_location_reads_like_the_request():
    assert field_path(("body", "messages", 0, "content")) == "messages[0].content"
    assert field_path(("body",)) == "body"


@given(offset=st.integers(-10_000, 10_000))
def test_a_cursor_keeps_the_instant_of_a_non_utc_time(offset):
    created = NOW.astimezone(timezone(timedelta(minutes=offset % 1440)))
    decoded, _ = decode_cursor(encode_cursor(Job(created_at=created, id=uuid.uuid4())))
    assert decoded == NOW
