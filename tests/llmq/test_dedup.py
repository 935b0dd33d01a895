"""Which way a follower of a batch's repeated line goes once its leader's state is known."""

from __future__ import annotations

import pytest

from llmq.jobs.dedup import Fate, LeaderEnd, fate


@pytest.mark.parametrize(
    ("status", "model", "finish_reason", "completion_tokens", "expected"),
    [
        ("queued", "m", None, None, Fate.WAIT),
        ("running", "m", None, None, Fate.WAIT),
        ("succeeded", "m", "stop", 3, Fate.COPY),
        ("succeeded", "m", "length", 16, Fate.COPY),  # ended at its max_tokens
        ("succeeded", "m", "length", 5, Fate.PROMOTE),  # cut short by the worker's bound
        ("succeeded", "fallback", "stop", 3, Fate.PROMOTE),  # answered by another model
        ("failed", "m", None, None, Fate.PROMOTE),
        ("cancelled", "m", "stop", 3, Fate.PROMOTE),  # cancelled after it answered
        ("expired", "m", None, None, Fate.PROMOTE),
    ],
)
def test_a_follower_copies_only_a_whole_answer_of_its_own_model(
    status, model, finish_reason, completion_tokens, expected
):
    leader = LeaderEnd(status, model, finish_reason, completion_tokens, 16, follower_model="m")
    assert fate(leader) is expected
