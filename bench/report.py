"""The benchmark table: each figure with its goal, and whether the run met it.

Pure: figures in, rows and Markdown out, so a missed goal is decided in one place and is
never left to whoever reads the table. Every ratio comes from runs taken in pairs (A then B,
then A again, …) through `paired_ratio`: its value is the median of the pair ratios, and a
goal that falls inside their spread is reported as inconclusive rather than met or missed.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    "≥": operator.ge,
    ">": operator.gt,
    "≤": operator.le,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Goal:
    """`value <op> target`, shown as e.g. `≥ 0.9` or `cached < 4 s`."""

    op: str
    target: float
    unit: str = ""
    subject: str = ""

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.target)

    def __str__(self) -> str:
        text = f"{self.op} {self.target:g}{self.unit}"
        return f"{self.subject} {text}" if self.subject else text


INCONCLUSIVE = "inconclusive: spread too wide"
MIN_PAIRS = 5  # fewer pairs leave the quartiles of the ratios meaningless


def judge(goal: Goal | None, value: float, spread: tuple[float, float] | None = None) -> str:
    """`met` or `MISSED` by `value`; `inconclusive` when the goal lies inside `spread` (one
    end of it meets the goal and the other does not), so noise cannot decide the verdict."""
    if goal is None:
        return ""
    if spread is not None and goal.met(spread[0]) != goal.met(spread[1]):
        return INCONCLUSIVE
    return "met" if goal.met(value) else "MISSED"


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles (inclusive method: within min..max)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


@dataclass(frozen=True)
class Paired:
    """Runs of A and B taken in turns (A, B, A, B, …): each pair saw the same machine, so the
    ratio of a pair is fair even while the machine's load drifts between pairs."""

    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b, strict=True)]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def iqr(self) -> tuple[float, float]:
        """The quartiles of the pair ratios."""
        return quartiles(self.ratios)

    @property
    def relative_spread(self) -> float:
        """The IQR's width over the median: 0.1 means the middle half of pairs lie within 10 %."""
        q1, q3 = self.iqr
        return (q3 - q1) / self.median if self.median else float("inf")

    def describe(self) -> str:
        ratios = self.ratios
        q1, q3 = self.iqr
        return (
            f"{len(ratios)} pairs in turns, the median of the pair ratios; range "
            f"{min(ratios):.2f}..{max(ratios):.2f}, IQR {q1:.2f}..{q3:.2f} "
            f"(±{self.relative_spread / 2:.0%})"
        )


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> Paired:
    """A/B from runs taken in turns; `a[i]` and `b[i]` are one pair."""
    if len(a) != len(b) or not a:
        raise ValueError(f"pairs need as many A runs as B runs, and some: {len(a)} and {len(b)}")
    return Paired(tuple(a), tuple(b))


@dataclass(frozen=True)
class Figure:
    """One row: `value` is what the goal is checked against, `shown` how the table prints it;
    a ratio's `spread` (its IQR) can make the verdict inconclusive."""

    name: str
    value: float
    shown: str
    how: str
    goal: Goal | None = None
    spread: tuple[float, float] | None = None

    @property
    def verdict(self) -> str:
        return judge(self.goal, self.value, self.spread)


def ratio_figure(
    name: str, paired: Paired, how: str, goal: Goal | None = None, shown: str = "{:.2f}"
) -> Figure:
    """The row of a ratio: the median of the pairs, with their spread in the "how" column."""
    value = paired.median
    return Figure(name, value, shown.format(value), f"{how}; {paired.describe()}", goal, paired.iqr)


HEADER = ("figure", "measured", "goal", "verdict", "how")


def rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    return [(f.name, f.shown, str(f.goal or ""), f.verdict, f.how) for f in figures]


def missed(figures: list[Figure]) -> list[Figure]:
    return [f for f in figures if f.verdict == "MISSED"]


def summary(figures: list[Figure]) -> str:
    """One line: how many goals the run met, which it could not judge, and which it missed
    with what it measured."""
    goals = [f for f in figures if f.goal is not None]
    lost = missed(figures)
    unsure = [f for f in figures if f.verdict == INCONCLUSIVE]
    line = f"Goals met: {len(goals) - len(lost) - len(unsure)} of {len(goals)}"
    if unsure:
        line += "; inconclusive (spread too wide): " + ", ".join(f.name for f in unsure)
    if lost:
        line += "; missed: " + "; ".join(f"{f.name} ({f.shown}, goal {f.goal})" for f in lost)
    return line + "."


def markdown_table(figures: list[Figure]) -> list[str]:
    return [
        f"| {' | '.join(HEADER)} |",
        f"| {' | '.join('---' for _ in HEADER)} |",
        *[f"| {' | '.join(row)} |" for row in rows(figures)],
    ]
