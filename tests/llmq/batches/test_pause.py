"""Which pause and resume a batch allows, and the pace and ETA read from its counts."""

from __future__ import annotations

import pytest

from llmq.batches.pause import PAUSE, RESUME, refusal
from llmq.batches.records import Estimate, Progress, estimate


@pytest.mark.parametrize(
    ("action", "status", "paused", "allowed"),
    [
        (PAUSE, "in_progress", False, True),
        (PAUSE, "in_progress", True, False),
        (RESUME, "in_progress", True, True),
        (RESUME, "in_progress", False, False),
        (PAUSE, "finalizing", False, False),
        (RESUME, "cancelling", True, False),
        (PAUSE, "completed", False, False),
        (RESUME, "expired", True, False),
    ],
)
def test_only_an_in_progress_batch_pauses_and_only_a_paused_one_resumes(
    action, status, paused, allowed
):
    assert (refusal(action, status, paused) is None) is allowed


def counts(queued: int, running: int, recent_lines: int, tokens: int, window_s: float):
    return Progress(0, 0, queued, running, 0, 0, recent_lines, tokens, window_s)


def test_the_eta_is_the_lines_left_at_the_measured_seconds_per_line():
    # 20 lines ended in the last 10 s (0.5 s each), 200 tokens: 30 left take 15 s
    assert estimate(counts(26, 4, 20, 200, 10.0), paused=False) == Estimate(20.0, 15.0)


def test_nothing_is_measured_before_a_line_ends():
    assert estimate(counts(10, 2, 0, 0, 5.0), paused=False) == Estimate(None, None)
    assert estimate(counts(0, 0, 0, 0, 5.0), paused=False) == Estimate(None, 0.0)


def test_a_paused_batch_has_a_pace_but_no_eta():
    assert estimate(counts(8, 0, 4, 40, 8.0), paused=True) == Estimate(5.0, None)
