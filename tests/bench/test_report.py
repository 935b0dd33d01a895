"""The benchmark table judges each figure against its goal and describes the run it measured;
ratios come from pairs, and a goal inside their spread is inconclusive."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from bench import results
from bench.__main__ import (
    Params,
    header,
    latency_figures,
    main,
    measured,
    parse_only,
    write_plots,
)
from bench.report import (
    INCONCLUSIVE,
    Figure,
    Goal,
    judge,
    markdown_table,
    missed,
    paired_ratio,
    ratio_figure,
    rows,
    summary,
)
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


@pytest.mark.parametrize(
    ("goal", "value", "spread", "verdict"),
    [
        (None, 1.0, (0.5, 1.5), ""),
        (Goal("≥", 0.9), 1.0, None, "met"),
        (Goal("≥", 0.9), 1.0, (0.95, 1.1), "met"),
        (Goal("≥", 0.9), 0.8, (0.7, 0.85), "MISSED"),
        (Goal("≥", 0.9), 1.0, (0.85, 1.1), INCONCLUSIVE),  # the goal lies inside the spread
        (Goal("≥", 0.9), 0.8, (0.7, 0.9), INCONCLUSIVE),  # its upper end meets the goal
        (Goal("<", 4, " s"), 3.0, (2.0, 5.0), INCONCLUSIVE),
        (Goal("<", 4, " s"), 3.0, (2.0, 3.9), "met"),
    ],
)
def test_a_goal_inside_the_spread_is_inconclusive(goal, value, spread, verdict):
    assert judge(goal, value, spread) == verdict


def test_a_paired_ratio_is_the_median_of_the_pairs_with_their_spread():
    paired = paired_ratio([10, 20, 30, 40, 50], [10, 10, 10, 10, 10])
    assert paired.ratios == [1, 2, 3, 4, 5]
    assert paired.median == 3
    assert paired.iqr == (2, 4)  # inclusive quartiles of five: the 2nd and 4th
    assert paired.relative_spread == pytest.approx(2 / 3)
    assert paired.describe() == (
        "5 pairs in turns, the median of the pair ratios; range 1.00..5.00, IQR 2.00..4.00 (±33%)"
    )
    # The pairing is what counts: the same runs in another order give other ratios.
    assert paired_ratio([50, 40, 30, 20, 10], [10, 20, 30, 40, 50]).median == 1


def test_pairs_need_as_many_runs_on_each_side():
    with pytest.raises(ValueError, match="as many A runs as B runs"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_ratio([], [])
    assert paired_ratio([2.0], [1.0]).iqr == (2.0, 2.0)


def test_a_ratio_row_shows_its_spread_and_judges_by_it():
    wide = ratio_figure(
        "Overhead", paired_ratio([5, 9, 10, 11, 20], [10] * 5), "echo / no-op", Goal("≥", 0.9)
    )
    assert wide.value == 1.0 and wide.shown == "1.00"
    assert wide.how.startswith("echo / no-op; 5 pairs in turns")
    assert "IQR 0.90..1.10" in wide.how
    assert wide.verdict == "met"  # 0.90 itself meets ≥ 0.9
    narrow = ratio_figure(
        "Gain", paired_ratio([70] * 5, [10] * 5), "x", Goal("≥", 6, "x"), "{:.1f}x"
    )
    assert (narrow.shown, narrow.verdict) == ("7.0x", "met")
    unsure = ratio_figure(
        "Chat", paired_ratio([8, 8.5, 9.5, 10, 11], [10] * 5), "c", Goal("≥", 0.9)
    )
    assert unsure.verdict == INCONCLUSIVE
    assert summary([wide, narrow, unsure]) == (
        "Goals met: 2 of 3; inconclusive (spread too wide): Chat."
    )
    assert missed([unsure]) == []


def test_only_names_sections_in_the_runs_order():
    assert [s.name for s in parse_only("submit")] == ["submit"]
    assert [s.name for s in parse_only(" latency,pipeline ,")] == ["pipeline", "latency"]
    assert len(parse_only(None)) == len(parse_only("")) > 10
    with pytest.raises(ValueError, match="unknown section nope; one of: cold, pipeline"):
        parse_only("submit,nope")
    with pytest.raises(SystemExit):
        main(["--only", "nope"])


def test_list_prints_every_section(capsys):
    assert main(["--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names[:2] == ["cold", "pipeline"] and "submit" in names and "throughput" in names


def run_of(params: Params, date: str = "2026-12-04 10:00 UTC", machine: str = "2 cores") -> dict:
    """A results file as a full run with `params` writes it, from made-up samples."""

    def runs(*tok_per_s: float, sizes=(8,)) -> list[dict]:
        return [{"tokens_per_s": x, "batch_sizes": list(sizes)} for x in tok_per_s]

    measured_by = {
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
        "pipeline": {
            "pipeline": runs(100, 98, 102, 101, 99),
            "bare": runs(105, 104, 106, 105, 100),
            "serial": runs(20, 20, 21, 19, 20),
            "rss_mb": 1200.0,
        },
        "continuous": {"continuous": runs(50, 50, 50, 50, 50), "static": runs(100, 100, 100, 100, 100)},
        "throughput": {"batches": [{"batch": n, "tokens_per_s": 10.0 * n} for n in (1, 2, 4, 8)]},
        "overhead": {"echo_per_s": [500, 510, 490, 500, 505], "noop_per_s": [700, 700, 700, 700, 700]},
        "latency": {"samples_ms": [float(x) for x in range(1, 101)]},
        "submit": {"single_per_s": 250.0, "bulk_per_s": 4000.0},
        "submit_path": {"ours_per_s": [350, 360, 340, 350, 355], "bare_per_s": [500] * 5,
                        "count": 1000, "threads": 8, "workers": 2},
        "chat": {"chat_per_s": [60, 45, 58, 62, 40], "jobs_per_s": [55, 55, 55, 55, 55]},
        "cache": {"hits": 300, "p50_ms": 4.2, "p99_ms": 11.0},
        "batch": {"lines": 700, "max_tokens": 4, "bytes": 140_000, "upload_s": 0.1, "enqueue_s": 5.5,
                  "finish_s": 7.0, "finalize_s": 1.5, "interval_s": 5.0, "finalizing_pass_s": 0.4},
        "backlog": {"lines": 20_000, "jobs_per_s": 20.0, "seconds": 8.0, "alone": [100.0, 200.0],
                    "under": [150.0, 500.0], "done_during": 600, "fair_lines": 5000,
                    "fair_done": [3300, 1700], "fairness_error": abs(3300 / 1700 / 2 - 1)},
        "upload": {"idle_mb": 100.0, "above_idle_mb": 140.0, "mb_per_s": 120.0},
        "semantic": {"entries": 50_000, "lookups": 300, "hit_rate": 1.0, "hit_p50_ms": 1.2,
                     "hit_p99_ms": 6.5, "miss_p99_ms": 3.0, "add_s": 4.0, "catch_up_s": 2.0,
                     "embed_ms": 30.0},
        "scale": {"rows": 20_000, "baseline_rows": 1000, "keys": 4, "load": asdict(Loaded(20_000, 19_600, 3.0)),
                  "empty": {"get": 4.0, "usage by day": 5.0}, "full": {"get": 4.4, "usage by day": 12.5}},
        "batch_memory": {"lines": 1_000_000, "bytes": 175_000_000, "upload_s": 3.0, "create_s": 250.0,
                         "work_s": 60.0, "finished": 5000, "cancel_s": 2.0, "api_admit_mb": 80.0,
                         "api_mb": 90.0, "worker_mb": 18.0, "redis_mb": 0.5, "api_idle_mb": 110.0,
                         "worker_idle_mb": 107.0},
    }  # fmt: skip
    return {
        "sections": {
            name: results.entry(date, machine, asdict(params), result)
            for name, result in measured_by.items()
        }
    }


PARAMS = Params(
    batch=8, serial_jobs=3, continuous_jobs=4, noop_concurrency=16, bulk_jobs=700,
    chat_requests=50, chat_threads=4, upload_bytes=50_000_000, throughput_batches=(1, 2, 4, 8),
)  # fmt: skip


def test_the_how_column_follows_the_parameters_used():
    how = {f.name: f.how for f in measured(run_of(PARAMS))}
    assert "(8 jobs, batches [8])" in how["Pipeline efficiency"]
    assert "5 pairs in turns" in how["Pipeline efficiency"]
    assert "with 3 jobs one at a time" in how["Batching gain"]
    assert "the same 4 concurrent jobs" in how["Continuous / static batching"]
    assert "1: 10, 2: 20, 4: 40, 8: 80 tok/s" in how["Bare generate by batch size"]
    assert "threads -c 16" in how["Overhead"]
    assert "700 jobs per request" in how["Bulk submit rate"]
    assert "batches of 8" in how["Memory"]
    assert "(echo, 50 requests from 4 threads per run)" in how["Chat completions / jobs"]
    assert "300 in a row" in how["Cache hit submit → result"]
    assert "a 50 MB file" in how["Upload memory"]
    assert "a 700-line batch" in how["Batch validate + enqueue"]
    assert "(every 5 s) as the net" in how["Batch finalize"]
    assert "300 near-duplicate lookups among 50,000 entries" in how["Semantic lookup"]
    assert "another key's 20,000-line batch" in how["Interactive queue time, beside a batch"]
    assert "3,300:1,700" in how["Fairness error"]
    assert "imports 0.10" in how["Cold start"] and "median of 1.10, 1.20, 1.40" in how["Cold start"]
    assert "imports 3.00" in how["Cold start"] and "once in 25.0 s" in how["Cold start"]
    assert "1000 submits from 8 client threads per run; 5 pairs" in how["Submit path"]
    assert "usage by day 5.0 → 12.5 (2.50x)" in how["Cost at 20,000 jobs / 1,000"]
    assert "a 1,000,000-line batch (175 MB)" in how["Batch memory: API"]
    verdicts = {f.name: f.verdict for f in measured(run_of(PARAMS))}
    assert verdicts == {
        "Cold start": "met",
        "Pipeline efficiency": "met",  # pairs 0.95..1.01, all at or over 0.9
        "Batching gain": "MISSED",  # 100 tok/s / 20 tok/s is 5x, under 6x
        "Memory": "",
        "Continuous / static batching": "",
        "Bare generate by batch size": "",
        "Overhead": "met",
        "Submit → result visible, p50": "MISSED",  # 50.5 ms of 1..100 ms, over 15
        "Submit → result visible, p99": "MISSED",  # 99 ms, over 60
        "Submit rate": "",
        "Bulk submit rate": "MISSED",  # 4,000 jobs/s, under 10,000
        "Submit path": "met",  # pairs 0.68..0.72, all over 0.6
        "Chat completions / jobs": INCONCLUSIVE,  # IQR 0.82..1.09 around 0.9
        "Cache hit submit → result": "met",  # p50 4.2 ms
        "Batch validate + enqueue": "MISSED",  # 5.5 s, over 5
        "Batch finish": "",
        "Batch finalize": "met",  # 1.5 s after the last job
        "Interactive queue time, alone": "",
        "Interactive queue time, beside a batch": "MISSED",  # p99 500 ms, 2.5x 200 ms
        "Fairness error": "met",  # 3300:1700 is 1.94, 2.9 % under 2
        "Upload memory": "MISSED",  # 140 MB above idle, over 100
        "Semantic lookup": "MISSED",  # p99 6.5 ms, over 5
        "Prompt embedding": "",
        "Cost at 20,000 jobs / 1,000": "MISSED",  # usage by day 2.5x, over 2x
        "Batch memory: API": "met",  # 90 MB above idle
        "Batch memory: Redis": "met",
        "Batch memory: worker": "",
    }


def test_a_partial_run_replaces_only_its_sections(tmp_path):
    old = run_of(PARAMS)
    newer = {"sections": {"submit": results.entry(
        "2026-12-05 09:00 UTC", "16 cores", asdict(Params()), {"single_per_s": 900.0, "bulk_per_s": 1.0}
    )}}  # fmt: skip
    merged = results.merge(old, newer)
    assert merged["sections"]["submit"]["result"]["single_per_s"] == 900
    assert merged["sections"]["cold"] == old["sections"]["cold"]
    shown = {f.name: f.shown for f in measured(merged)}
    assert shown["Submit rate"] == "900 jobs/s" and shown["Cold start"].startswith(
        "1.20 s from zero"
    )
    lines = header(merged)
    assert lines[:2] == ["- Date: 2026-12-05 09:00 UTC", "- Machine: 16 cores"]
    assert lines[2].startswith("- Kept from earlier runs")
    kept = [part.split(" (")[0] for part in lines[2].split(": ", 1)[1].split("; ")]
    assert "cold (2026-12-04 10:00 UTC, 2 cores)" in lines[2] and "submit" not in kept
    path = tmp_path / "latest.json"
    assert results.load(path) == {"sections": {}}
    results.save(path, merged)
    assert rows(measured(results.load(path))) == rows(measured(merged))  # floats kept to 4 digits


def test_stored_parameters_outlive_new_fields():
    stored = asdict(PARAMS) | {"gone": 1}
    del stored["serial_jobs"]
    p = Params.stored(stored)
    assert p.batch == 8 and p.serial_jobs == Params().serial_jobs
    assert p.throughput_batches == (1, 2, 4, 8)


def test_the_plots_are_written_from_the_samples(tmp_path):
    written = write_plots(run_of(PARAMS), tmp_path)
    assert sorted(p.name for p in written) == ["latency.png", "throughput.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_plots({"sections": {}}, tmp_path / "none") == []


def test_latency_is_judged_from_the_runs_percentiles():
    def run(p50: float) -> list[float]:  # 100 samples: the median is p50, the p99 is 40 ms
        return sorted([p50] * 51 + [p50 - 1] * 45 + [40.0] * 4)

    fast = {"runs_ms": [run(x) for x in (10, 11, 12, 11, 10)]}
    p50, p99 = latency_figures({**fast, "samples_ms": []}, PARAMS)
    assert p50.value == 11 and p50.verdict == "met" and "runs 10.0, 11.0, 12.0" in p50.how
    assert p99.value == 40 and p99.verdict == "met"
    straddling = {"runs_ms": [run(x) for x in (12, 14, 16, 17, 13)], "samples_ms": []}
    assert latency_figures(straddling, PARAMS)[0].verdict == INCONCLUSIVE  # IQR 13..16
