"""The raw samples of every benchmark section, as JSON beside the table they make.

`bench/results/latest.json` holds one entry per section: when it ran, on what machine, with
which parameters, and what it measured. A run of some sections (`--only`) replaces only
theirs, so BENCHMARKS.md, rendered from this file, keeps every other row as its own run
measured it. `make bench-gpu` writes `bench/results/gpu.json` the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.env import ROOT

RESULTS = ROOT / "bench" / "results"
LATEST = RESULTS / "latest.json"
GPU = RESULTS / "gpu.json"


def load(path: Path) -> dict[str, Any]:
    """The file's contents, or an empty store where there is none yet."""
    return json.loads(path.read_text()) if path.exists() else {"sections": {}}


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with each of `new`'s sections in place of its own; the rest kept as they were."""
    return {**old, "sections": {**old.get("sections", {}), **new.get("sections", {})}}


def entry(date: str, machine: str, params: dict[str, Any], result: dict[str, Any]) -> dict:
    return {"date": date, "machine": machine, "params": params, "result": result}


def save(path: Path, store: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_rounded(store), indent=1, sort_keys=True) + "\n")


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits: the file stays small and diffs stay readable."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value
