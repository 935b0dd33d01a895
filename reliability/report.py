"""The shape every reliability suite reports in, and the RELIABILITY.md writer.

A suite returns one `SuiteResult`; the report keeps the latest result of every suite in
RELIABILITY.json, so running one suite rewrites its rows and keeps the others'.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT_MD = ROOT / "RELIABILITY.md"
REPORT_JSON = ROOT / "RELIABILITY.json"


@dataclass
class Figure:
    """One row of the table: what was measured, its value, and the goal it is held to."""

    name: str
    value: str
    goal: str = ""
    met: bool | None = None  # None: a figure with no goal


@dataclass
class SuiteResult:
    suite: str  # "chaos", "fuzz", "load", "security"
    how: str  # what ran: parameters, counts, duration, in words a reader can repeat
    figures: list[Figure]
    raw: dict = field(default_factory=dict)  # samples and details, saved in RELIABILITY.json
    ran_at: str = field(default_factory=lambda: f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")

    @property
    def ok(self) -> bool:
        return all(f.met is not False for f in self.figures)


def load_results(path: Path = REPORT_JSON) -> dict[str, SuiteResult]:
    if not path.exists():
        return {}
    out = {}
    for suite, data in json.loads(path.read_text()).get("suites", {}).items():
        figures = [Figure(**f) for f in data.pop("figures")]
        out[suite] = SuiteResult(figures=figures, **data)
    return out


def render(results: dict[str, SuiteResult], machine: str) -> str:
    lines = [
        "# Reliability",
        "",
        f"- Machine: {machine}",
        "- Command: `make reliability` (`python -m reliability`); one suite: `make chaos`, "
        "`make load`, `python -m reliability fuzz|security`",
        "",
        "| suite | figure | measured | goal | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for suite in sorted(results):
        for f in results[suite].figures:
            verdict = {True: "met", False: "**missed**", None: ""}[f.met]
            lines.append(f"| {suite} | {f.name} | {f.value} | {f.goal} | {verdict} |")
    lines.append("")
    for suite in sorted(results):
        r = results[suite]
        lines += [f"## {suite}", "", f"Ran {r.ran_at}. {r.how}", ""]
    return "\n".join(lines)


def write(new: list[SuiteResult], machine: str) -> dict[str, SuiteResult]:
    """Merge `new` into the saved results and rewrite RELIABILITY.md and RELIABILITY.json."""
    results = load_results()
    results.update({r.suite: r for r in new})
    REPORT_JSON.write_text(
        json.dumps({"suites": {s: asdict(r) for s, r in results.items()}}, indent=1) + "\n"
    )
    REPORT_MD.write_text(render(results, machine))
    return results
