"""The benchmark table judges each figure against its goal and describes the run it measured."""

from __future__ import annotations

import pytest

from bench.__main__ import Params, measured
from bench.report import Figure, Goal, markdown_table, missed, summary
from bench.scale import Loaded


@pytest.mark.parametrize(
    ("goal", "value", "met"),
    [
        (Goal("≥", 0.9), 0.9, True),
        (Goal("≥", 0.9), 0.89, False),
        (Goal("<", 4, " s"), 3.9, True),
        (Goal("<", 4, " s"), 4.0, False),
        (Goal("≤", 2), 2, True),
        (Goal(">", 2), 2, False),
    ],
)
def test_a_goal_is_met_or_missed(goal, value, met):
    assert goal.met(value) is met


def test_a_missed_goal_is_named_with_what_was_measured():
    figures = [
        Figure("Speed", 7.0, "7.0x", "how", Goal("≥", 6, "x")),
        Figure("Cold start", 4.3, "4.3 s cached", "how", Goal("<", 4, " s", subject="cached")),
        Figure("Memory", 1200, "1200 MB", "how"),
    ]
    assert [f.verdict for f in figures] == ["met", "MISSED", ""]
    assert missed(figures) == [figures[1]]
    assert summary(figures) == (
        "Goals met: 1 of 2; missed: Cold start (4.3 s cached, goal cached < 4 s)."
    )
    assert (
        markdown_table(figures)[3] == "| Cold start | 4.3 s cached | cached < 4 s | MISSED | how |"
    )


def fake_results() -> dict:
    run = {"tokens_per_s": 100.0, "batch_sizes": [8]}
    return {
        "batched": run,
        "bare": {"tokens_per_s": 105.0},
        "ratios": [0.95, 0.96],
        "serial": {"tokens_per_s": 20.0},
        "continuous": {"tokens_per_s": 50.0},
        "echo": 500.0,
        "noop": 700.0,
        "p50": 30.0,
        "p99": 60.0,
        "submit": 250.0,
        "bulk": 4000.0,
        "cold": {
            "prepare_s": 25.0,
            "template": [
                {"total": t, "spawn": 0.02, "imports": 0.1, "weights": 0.6, "first batch": 0.3}
                for t in (1.1, 1.2, 1.4)
            ],
            "plain": [
                {"total": t, "spawn": 0.02, "imports": 3.0, "weights": 0.6, "first batch": 0.3}
                for t in (4.0, 4.1)
            ],
        },
        "submit_path": {
            "jobs_per_s": 300.0,
            "bare_per_s": 500.0,
            "ratios": [0.5, 0.6, 0.7],
            "count": 400,
            "threads": 8,
            "workers": 2,
        },
        "rss_mb": 1200.0,
        "chat": {"chat_per_s": 60.0, "jobs_per_s": 55.0, "ratios": [1.1, 1.05, 0.85]},
        "cache": {"hits": 300, "p50_ms": 4.2, "p99_ms": 11.0},
        "upload": {"idle_mb": 100.0, "above_idle_mb": 140.0, "mb_per_s": 120.0},
        "batch": {
            "lines": 700,
            "max_tokens": 4,
            "bytes": 140_000,
            "upload_s": 0.1,
            "enqueue_s": 5.5,
            "finish_s": 7.0,
            "finalize_s": 1.5,
            "interval_s": 5.0,
            "finalizing_pass_s": 0.4,
        },
        "semantic": {
            "entries": 50_000,
            "lookups": 300,
            "hit_rate": 1.0,
            "hit_p50_ms": 1.2,
            "hit_p99_ms": 6.5,
            "miss_p99_ms": 3.0,
            "add_s": 4.0,
            "catch_up_s": 2.0,
            "embed_ms": 30.0,
        },
        "backlog": {
            "lines": 20_000,
            "jobs_per_s": 20.0,
            "seconds": 8.0,
            "alone": (100.0, 200.0),
            "under": (150.0, 500.0),
            "done_during": 600,
            "fair_lines": 5000,
            "fair_done": {2.0: 3300, 1.0: 1700},
            "fairness_error": abs(3300 / 1700 / 2 - 1),
        },
        "scale": {
            "rows": 20_000,
            "baseline_rows": 1000,
            "keys": 4,
            "load": Loaded(20_000, 19_600, 3.0),
            "empty": {"get": 4.0, "usage by day": 5.0},
            "full": {"get": 4.4, "usage by day": 12.5},
        },
    }


def test_the_how_column_follows_the_parameters_used():
    params = Params(
        batch=8, paired_runs=2, serial_jobs=3, noop_concurrency=16, bulk_jobs=700,
        chat_requests=50, chat_threads=4, chat_pairs=3, upload_bytes=50_000_000,
    )  # fmt: skip
    how = {f.name: f.how for f in measured(fake_results(), params)}
    assert "(8 jobs, batches [8])" in how["Pipeline efficiency"]
    assert "2 runs of each" in how["Pipeline efficiency"]
    assert "with 3 jobs one at a time" in how["Batching gain"]
    assert "threads -c 16" in how["Overhead"]
    assert "(700 per request)" in how["Submit rate"]
    assert "batches of 8" in how["Memory"]
    assert "imports 0.10" in how["Cold start"] and "median of 1.10, 1.20, 1.40" in how["Cold start"]
    assert "imports 3.00" in how["Cold start"] and "once in 25.0 s" in how["Cold start"]
    assert "400 submits from 8 client threads, 3 pairs" in how["Submit path"]
    assert "(echo, 50 requests from 4 threads); 3 pairs" in how["Chat completions / jobs"]
    assert "300 in a row" in how["Cache hit submit → result"]
    assert "a 50 MB file" in how["Upload memory"]
    assert "a 700-line batch" in how["Batch validate + enqueue"]
    assert "(every 5 s) as the net" in how["Batch finalize"]
    assert "300 near-duplicate lookups among 50,000 entries" in how["Semantic lookup"]
    assert "another key's 20,000-line batch" in how["Interactive queue time, beside a batch"]
    assert "3,300:1,700" in how["Fairness error"]
    assert "usage by day 5.0 → 12.5 (2.50x)" in how["Cost at 20,000 jobs / 1,000"]
    verdicts = {f.name: f.verdict for f in measured(fake_results(), params)}
    assert verdicts == {
        "Pipeline efficiency": "met",
        "Batching gain": "MISSED",  # 100 tok/s / 20 tok/s is 5x, under 6x
        "Continuous / static batching": "",
        "Overhead": "met",
        "Submit rate": "",
        "Submit → result visible": "",
        "Cold start": "met",
        "Memory": "",
        "Submit path": "met",  # the median of 0.5, 0.6, 0.7
        "Chat completions / jobs": "met",  # the median of 1.1, 1.05, 0.85
        "Cache hit submit → result": "met",  # p50 4.2 ms
        "Upload memory": "MISSED",  # 140 MB above idle, over 100
        "Batch validate + enqueue": "MISSED",  # 5.5 s, over 5
        "Batch finish": "",
        "Batch finalize": "met",  # 1.5 s after the last job
        "Semantic lookup": "MISSED",  # p99 6.5 ms, over 5
        "Prompt embedding": "",
        "Interactive queue time, alone": "",
        "Interactive queue time, beside a batch": "MISSED",  # p99 500 ms, 2.5x 200 ms
        "Fairness error": "met",  # 3300:1700 is 1.94, 2.9 % under 2
        "Cost at 20,000 jobs / 1,000": "MISSED",  # usage by day 2.5x, over 2x
    }
