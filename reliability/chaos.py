"""Chaos: random faults while jobs flow, and after each round the invariants that must hold.

A whole stack runs on private Redis and Postgres (they are restarted here; the machine's
shared servers are never touched): the API, two schedulers (leader and stand-by, the
leader's local backend runs the `echo` and tiny-model pools), the webhook sender, and a
real receiver that verifies signatures. Each round: jobs flow, one fault strikes, the
supervisor brings back what died, the system settles (with a bound), then every invariant
of `reliability.invariants` is checked over everything submitted so far.

The fault sequence comes from a seeded RNG; the seed is printed and saved, and
`RELIABILITY_CHAOS_SEED=<seed> python -m reliability chaos` repeats it
(`RELIABILITY_CHAOS_ROUNDS` sets the number of rounds).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from reliability import services
from reliability.checks import Checker
from reliability.faults import FAULTS
from reliability.receiver import Receiver
from reliability.report import Figure, SuiteResult
from reliability.stack import ROOT, Stack, create_keys
from reliability.traffic import Traffic

QUICK_ROUNDS, FULL_ROUNDS = 3, 50
RECOVERY_BOUND_S = 90.0  # a process must be back this long after its fault
SETTLE_BOUND_S = 120.0  # every job final and every webhook received this long after traffic
PROCESS_KINDS = ("api", "scheduler", "webhook-sender", "worker", "redis", "postgres")


def plan(rng: random.Random, rounds: int) -> list[str]:
    """Which fault each round gets: every kind once (shuffled) first, then at random."""
    kinds = list(FAULTS)
    first = rng.sample(kinds, len(kinds))
    return (first + [rng.choice(kinds) for _ in range(max(0, rounds - len(kinds)))])[:rounds]


def _wait(check: Callable[[], object], bound_s: float, stack: Stack) -> float | None:
    """Seconds until `check()` holds while the supervisor does its work; None past the bound."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        stack.supervise()
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # a probe that cannot answer yet is not back
            pass
        time.sleep(0.2)
    return None


def _build_tiny(folder: Path) -> subprocess.Popen:
    """Build the tests' tiny transformers model in a child, while the servers start."""
    code = f"from pathlib import Path; from tests.tiny_model import build_tiny_model; build_tiny_model(Path({str(folder)!r}))"
    with (folder.parent / "tiny-build.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=log,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip


def run(quick: bool = False) -> SuiteResult:
    reason = services.available()
    if reason:  # a row that says so, rather than a crash of every other suite's run
        how = f"Not run: chaos needs private Redis and Postgres servers, and {reason}."
        return SuiteResult("chaos", how, [Figure("ran", "no", "yes", False)])
    seed = int(os.environ.get("RELIABILITY_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    rounds = int(
        os.environ.get("RELIABILITY_CHAOS_ROUNDS") or (QUICK_ROUNDS if quick else FULL_ROUNDS)
    )
    print(
        f"chaos: seed {seed}, {rounds} rounds (repeat: RELIABILITY_CHAOS_SEED={seed})", flush=True
    )
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix="llmq-chaos-"))
    started = time.monotonic()
    tiny = _build_tiny(folder / "tiny")
    stack = Stack(folder, folder / "tiny")
    receiver = None
    try:

        def tiny_built() -> None:
            if tiny.wait(timeout=300) != 0:
                raise RuntimeError(f"building the tiny model failed; see {folder}/tiny-build.log")

        stack.start(before_workers=tiny_built)
        keys = create_keys(stack)
        receiver = Receiver({name: k["secret"] for name, k in keys.items()})
        checker = Checker(stack, keys, receiver)
        startup_s = _wait(lambda: all(stack.all_up().values()), 300, stack)
        if startup_s is None:
            raise RuntimeError(f"the stack did not come up: {stack.all_up()} (logs in {folder})")
        print(
            f"chaos: stack up in {time.monotonic() - started:.0f}s (logs in {folder})", flush=True
        )
        details = []
        try:
            for number, kind in enumerate(plan(rng, rounds), 1):
                details.append(_round(number, kind, rng, stack, keys, receiver, checker))
                print(f"chaos: round {number} {kind}: {details[-1]['summary']}", flush=True)
        except KeyboardInterrupt:  # Ctrl-C: report the rounds that ran to their checks
            print(f"chaos: interrupted after {len(details)} of {rounds} rounds", flush=True)
            if not details:
                raise
        result = _result(seed, rounds, quick, details, checker, stack, time.monotonic() - started)
    finally:
        if receiver is not None:
            receiver.close()
        stack.stop()
    if os.environ.get("RELIABILITY_KEEP_LOGS"):
        print(f"chaos: logs kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _seconds(value: float | None) -> str:
    return "not within the bound" if value is None else f"{value:.1f}s"


def _round(
    number: int,
    kind: str,
    rng: random.Random,
    stack: Stack,
    keys: dict[str, dict],
    receiver: Receiver,
    checker: Checker,
) -> dict:
    """One round: traffic, the fault, recovery, settling, then the invariants."""
    traffic = Traffic(stack.api_url, keys, receiver.url_for, rng.randrange(2**32)).start()
    time.sleep(rng.uniform(1.0, 2.5))  # jobs are queued and running when the fault strikes
    fault = FAULTS[kind](stack, rng)
    back_s = _wait(fault.back, RECOVERY_BOUND_S, stack)
    all_up_s = _wait(lambda: all(stack.all_up().values()), RECOVERY_BOUND_S, stack)
    time.sleep(rng.uniform(1.0, 2.0))  # and jobs keep coming after it
    submitted = traffic.stop()
    checker.add(submitted)
    settle_s = _wait(checker.settled, SETTLE_BOUND_S, stack)
    findings = checker.check()
    detail = {
        "round": number,
        "fault": kind,
        "detail": fault.detail,
        "process": fault.process,
        "recovery_s": None if back_s is None else round(back_s, 2),
        "all_up_s": None if all_up_s is None else round(all_up_s, 2),
        "not_back": [] if all_up_s is not None else [k for k, v in stack.all_up().items() if not v],
        "settle_s": None if settle_s is None else round(settle_s, 2),
        "submitted": len(submitted.accepted),
        "answers": dict(submitted.answers),
        "cancels": dict(submitted.cancels),
        "new_findings": findings,
    }
    bad = {k: len(v) for k, v in findings.items() if v}
    detail["summary"] = (
        f"{fault.detail}; back in {_seconds(back_s)}, settled in {_seconds(settle_s)}, "
        f"{len(submitted.accepted)} jobs, answers {dict(submitted.answers)}; "
        + (f"VIOLATIONS {bad}" if bad else "invariants hold")
    )
    return detail


def _result(
    seed: int,
    rounds: int,
    quick: bool,
    details: list[dict],
    checker: Checker,
    stack: Stack,
    duration_s: float,
) -> SuiteResult:
    totals = checker.totals()
    faults = Counter(d["fault"] for d in details)
    not_back = sum(1 for d in details if d["recovery_s"] is None or d["not_back"])
    figures = [
        Figure("rounds", str(len(details))),
        Figure("faults by kind", ", ".join(f"{k} {n}" for k, n in sorted(faults.items()))),
        Figure("jobs submitted (2xx)", str(len(checker.accepted))),
        Figure(
            "jobs by final status",
            ", ".join(f"{k} {n}" for k, n in sorted(checker.statuses().items())),
        ),
    ]
    for name, label in (
        ("lost", "jobs lost"),
        ("stuck", "jobs stuck (not final within the settle bound)"),
        ("double_finishes", "double-run finishes written"),
        ("ledger_mismatches", "ledger mismatches (rows, prices, /v1/usage)"),
        ("webhooks_missing", "webhook events missing"),
        ("webhooks_unexpected", "webhook events no job owed"),
        ("budget_overruns", "budget overruns"),
        ("signatures_rejected", "webhook signatures rejected"),
    ):
        figures.append(Figure(label, str(totals[name]), "0", totals[name] == 0))
    answers: Counter = Counter()
    for d in details:
        answers.update(d["answers"])
    errors = sum(n for code, n in answers.items() if code.isdigit() and int(code) >= 500
                 and code != "503")  # fmt: skip
    figures.append(
        Figure("submit answers", ", ".join(f"{k} {n}" for k, n in sorted(answers.items())))
    )
    figures.append(Figure("submits answered 5xx other than 503", str(errors), "0", errors == 0))
    figures.append(Figure("processes not back within the bound", str(not_back), "0", not_back == 0))
    for kind in PROCESS_KINDS:
        times = [d["recovery_s"] for d in details if d["process"] == kind]
        if not times:
            continue
        worst = None if None in times else max(times)
        figures.append(
            Figure(
                f"max recovery: {kind}",
                "not back" if worst is None else f"{worst:.1f} s",
                f"≤ {RECOVERY_BOUND_S:.0f} s",
                worst is not None,
            )
        )
    again, spent = checker.redeliveries()
    figures.append(Figure("jobs claimed more than once / failed after max attempts",
                          f"{again} / {spent}"))  # fmt: skip
    received, deliveries = checker.deliveries()
    figures.append(
        Figure("webhook events received (distinct / deliveries)", f"{received} / {deliveries}")
    )
    ran = f"{len(details)} of {rounds}" if len(details) < rounds else str(rounds)
    how = (
        f"{ran} rounds{' (quick)' if quick else ''}, seed {seed} "
        f"(repeat: `RELIABILITY_CHAOS_SEED={seed} python -m reliability chaos`), "
        f"{duration_s / 60:.1f} min. Private Redis and Postgres; API, two schedulers (local "
        "backend, echo and tiny pools), webhook sender, signature-checking receiver. Each "
        f"round: jobs flow, one fault, the supervisor restarts what died (bound "
        f"{RECOVERY_BOUND_S:.0f} s), settle (bound {SETTLE_BOUND_S:.0f} s), invariants checked "
        "over every job so far. Restarts by the supervisor: "
        + (", ".join(f"{k} {n}" for k, n in sorted(stack.restarts.items())) or "none")
        + "."
    )
    raw = {"seed": seed, "duration_s": round(duration_s), "rounds": details,
           "violations": checker.violations}  # fmt: skip
    return SuiteResult("chaos", how, figures, raw)
