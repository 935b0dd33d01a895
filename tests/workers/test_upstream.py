"""The remote engine's pure decisions: what is retried, how long to wait, which code a job ends
with."""

from __future__ import annotations

import pytest

from workers import upstream
from workers.upstream import MAX_RETRY_AFTER_S, UpstreamFailure


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, "upstream_rate_limited", True),
        (500, "upstream_error", True),
        (502, "upstream_error", True),
        (503, "upstream_error", True),
        (504, "upstream_timeout", True),
        (408, "upstream_timeout", True),
        (400, "upstream_rejected", False),
        (401, "upstream_rejected", False),
        (404, "upstream_rejected", False),
    ],
)
def test_status_maps_to_code_and_retry(status, code, retryable):
    failure = upstream.for_status(status, "detail", {})
    assert (failure.code, failure.retryable) == (code, retryable)
    assert str(status) in failure.message


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "86400"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
    ],
)
def test_retry_after(headers, seconds):
    now = 1445412480.0  # 2015-10-21 07:28:00 GMT
    assert upstream.retry_after_s(headers, now=now) == seconds


def test_backoff_honours_retry_after_else_grows_and_caps():
    told = UpstreamFailure("upstream_rate_limited", "", True, retry_after_s=3.0)
    assert upstream.backoff_s(told, 1, jitter=0.2) == 3.0
    silent = UpstreamFailure("upstream_error", "", True)
    waits = [upstream.backoff_s(silent, n, jitter=0.0) for n in range(1, 8)]
    assert waits == sorted(waits) and waits[0] == upstream.BACKOFF_INITIAL_S
    assert waits[-1] == upstream.BACKOFF_MAX_S
    assert upstream.backoff_s(silent, 1, jitter=0.2) == upstream.BACKOFF_INITIAL_S + 0.2


@pytest.mark.parametrize(
    ("reason", "ours"),
    [("stop", "stop"), ("length", "length"), ("content_filter", "stop"), (None, "stop")],
)
def test_finish_reason(reason, ours):
    assert upstream.finish_reason(reason) == ours
