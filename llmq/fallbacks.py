"""Fallback chains: which model a job moves to when its model fails it or cannot take it.

A job's chain is the model it was submitted for followed by that model's `fallbacks`, in
catalog order. Pure functions; the move itself is `llmq.jobs.fallback`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmq.catalog import Catalog

CIRCUIT_OPEN = "circuit_open"  # a hop's reason when the model's breaker was open
QUEUE_AGE = "queue_age"  # ... when the model's oldest queued job waited past its bound


def chain(catalog: Catalog, origin: str) -> list[str]:
    return [origin, *catalog.get(origin).fallbacks] if origin in catalog else [origin]


def origin(model: str, hops: list[dict[str, Any]] | None) -> str:
    """The model the job was submitted for."""
    return hops[0]["model"] if hops else model


def next_model(chain: list[str], tried: list[str], states: Mapping[str, str]) -> str | None:
    """The first model of the chain after the last one tried, not tried yet, whose circuit is
    not open (a model with no known state counts as closed); None: the chain is exhausted."""
    start = max((chain.index(m) + 1 for m in tried if m in chain), default=0)
    for model in chain[start:]:
        if model not in tried and states.get(model, "closed") != "open":
            return model
    return None


def at_submit(
    chain: list[str],
    admitted: bool,
    oldest_queued_s: float | None,
    queue_bound_s: float | None,
    states: Mapping[str, str],
) -> tuple[str, str | None]:
    """The model a new job goes to, and why it is not the one asked for (None: it is).

    `admitted`: the model's breaker lets the job through (closed, or a half-open probe). A
    job whose model's queue has waited past its bound, or whose circuit is open, goes to the
    first fallback whose circuit is not open; with none, it stays (and waits its turn).
    """
    model = chain[0]
    if queue_bound_s is not None and (oldest_queued_s or 0.0) > queue_bound_s:
        reason = QUEUE_AGE
    elif not admitted:
        reason = CIRCUIT_OPEN
    else:
        return model, None
    to = next_model(chain, [model], states)
    return (to, reason) if to is not None else (model, None)
