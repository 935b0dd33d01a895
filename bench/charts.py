"""The benchmark plots linked from BENCHMARKS.md (bench/plots/*.png): the submit → result
latency distribution, and tokens/s against batch size. `make bench` draws them from the raw
samples; they are never edited by hand."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.env import ROOT

PLOTS = ROOT / "bench" / "plots"
LATENCY_PNG = "latency.png"
THROUGHPUT_PNG = "throughput.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(
    samples_ms: Sequence[float], path: Path, title: str, marks: dict[str, float]
) -> Path:
    """The share of jobs whose result was visible within each latency; `marks` (e.g. the
    table's p50 and p99) drawn as lines."""
    plt = _pyplot()
    ordered = sorted(samples_ms)
    n = len(ordered)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ordered, [(i + 1) / n for i in range(n)], drawstyle="steps-post")
    for label, at in marks.items():
        share = sum(x <= at for x in ordered) / n
        ax.axvline(at, linestyle="--", linewidth=1, color="grey")
        ax.annotate(f"{label} {at:.0f} ms", (at, share), textcoords="offset points",
                    xytext=(4, -12))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("submit → result visible (ms, log scale)")
    ax.set_ylabel(f"share of {n} jobs")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, plt, path)


def throughput_by_batch(
    series: dict[str, Sequence[tuple[int, float]]], path: Path, title: str
) -> Path:
    """Tokens/s at each batch size (or concurrency), one line per series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes: set[int] = set()
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        sizes.update(xs)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(sizes), [str(s) for s in sorted(sizes)])
    ax.set_xlabel("batch size (prompts in one generate call)")
    ax.set_ylabel("generated tokens/s")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
