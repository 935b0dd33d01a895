"""A worker's start in parts: spawn, imports, weights."""

from __future__ import annotations

import os
import time

from workers.startup import parts_s, process_started_at, requested_at


def test_parts_from_the_times_of_a_start():
    assert parts_s(100.0, 100.25, 101.5, 102.0) == {"spawn": 0.25, "imports": 1.25, "weights": 0.5}
    assert parts_s(None, 100.0, 101.0, 101.5) == {"imports": 1.0, "weights": 0.5}


def test_a_clock_step_never_makes_a_part_negative():
    assert parts_s(100.5, 100.0, 101.0, 101.0)["spawn"] == 0.0


def test_this_process_started_before_now_and_after_boot():
    started = process_started_at()
    assert started <= time.time() + 0.05
    assert started > time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) - 1


def test_requested_at_reads_the_environment():
    assert requested_at({"LLMQ_START_REQUESTED_AT": "12.5"}) == 12.5
    assert requested_at({"LLMQ_START_REQUESTED_AT": "soon"}) is None
    assert requested_at(dict(os.environ, LLMQ_START_REQUESTED_AT="1")) == 1.0
