"""The benchmark table: each figure with its goal, and whether the run met it.

Pure: figures in, rows and Markdown out, so a missed goal is decided in one place and is
never left to whoever reads the table.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
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


@dataclass(frozen=True)
class Figure:
    """One row: `value` is what the goal is checked against, `shown` how the table prints it."""

    name: str
    value: float
    shown: str
    how: str
    goal: Goal | None = None

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        return "met" if self.goal.met(self.value) else "MISSED"


HEADER = ("figure", "measured", "goal", "verdict", "how")


def rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    return [(f.name, f.shown, str(f.goal or ""), f.verdict, f.how) for f in figures]


def missed(figures: list[Figure]) -> list[Figure]:
    return [f for f in figures if f.verdict == "MISSED"]


def summary(figures: list[Figure]) -> str:
    """One line: how many goals the run met, and which it missed with what it measured."""
    goals = [f for f in figures if f.goal is not None]
    lost = missed(figures)
    line = f"Goals met: {len(goals) - len(lost)} of {len(goals)}"
    if lost:
        line += "; missed: " + "; ".join(f"{f.name} ({f.shown}, goal {f.goal})" for f in lost)
    return line + "."


def markdown_table(figures: list[Figure]) -> list[str]:
    return [
        f"| {' | '.join(HEADER)} |",
        f"| {' | '.join('---' for _ in HEADER)} |",
        *[f"| {' | '.join(row)} |" for row in rows(figures)],
    ]
