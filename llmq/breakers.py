"""Circuit breakers, one per model, kept in Redis so every API replica and worker sees one state.

closed → open after `breaker_failures` failures within `breaker_window_s`; open for
`breaker_open_s`, then half-open: up to `breaker_probes` jobs are let through, the first
success closes it, a failure opens it again. The transitions are pure functions of
(breaker, event, now); `apply` runs one of them on the Redis copy inside WATCH/MULTI, so two
processes recording at once never lose an update.

Only failures the model answers for count (`counts_against_model`): a job's own input
(too long, a template that rejects it) or a cancel says nothing about the model's health.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Literal, TypeVar

import redis

from llmq import metrics
from llmq.catalog import ModelSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[str, int] = {"closed": 0, "open": 1, "half_open": 2}  # the metric's gauge
# Error codes a model or its backend is to blame for; anything else is the job's own.
MODEL_FAILURES = frozenset(
    {
        "engine_error",
        "out_of_memory",
        "timeout",
        "generation_timeout",
        "upstream_error",
        "upstream_timeout",
        "max_attempts_exceeded",
    }
)


def counts_against_model(error: dict | None) -> bool:
    return bool(error) and error.get("code") in MODEL_FAILURES


@dataclass(frozen=True)
class Limits:
    """One model's breaker settings, from its catalog entry."""

    failures: int = 5
    window_s: float = 60.0
    open_s: float = 30.0
    probes: int = 1

    @classmethod
    def of(cls, spec: ModelSpec) -> Limits:
        return cls(
            spec.breaker_failures, spec.breaker_window_s, spec.breaker_open_s, spec.breaker_probes
        )


@dataclass(frozen=True)
class Breaker:
    state: State = "closed"
    failures: tuple[float, ...] = ()  # when the failures within the window happened
    since: float = 0.0  # when the state was entered (unix seconds)
    probes: int = 0  # jobs let through since it went half-open
    opened: int = 0  # times it has opened, ever


CLOSED = Breaker()


def current(b: Breaker, now: float, limits: Limits) -> State:
    """The state as of `now`: an open breaker whose time is up reads as half-open."""
    if b.state == "open" and now - b.since >= limits.open_s:
        return "half_open"
    return b.state


def _open(b: Breaker, now: float) -> Breaker:
    return Breaker("open", (), now, 0, b.opened + 1)


def on_failure(b: Breaker, now: float, limits: Limits) -> Breaker:
    if b.state == "half_open" or current(b, now, limits) == "half_open":
        return _open(b, now)  # a probe failed (or a job did while probes were due)
    if b.state == "open":
        return b
    recent = (*(t for t in b.failures if now - t < limits.window_s), now)
    if len(recent) >= limits.failures:
        return _open(b, now)
    return replace(b, failures=recent[-limits.failures :])


def on_success(b: Breaker, now: float, limits: Limits) -> Breaker:
    if current(b, now, limits) == "half_open":
        return Breaker("closed", (), now, 0, b.opened)
    return b  # closed stays closed (failures age out); open waits its time


def on_admit(b: Breaker, now: float, limits: Limits) -> tuple[Breaker, bool]:
    """May a new job go to this model now? Half-open lets `probes` jobs through; a half-open
    breaker whose probes never reported (say, their jobs were cancelled) lets new probes
    through once another `open_s` has passed."""
    state = current(b, now, limits)
    if state == "closed":
        return b, True
    if state == "open":
        return b, False
    if b.state == "open" or now - b.since >= limits.open_s:
        return Breaker("half_open", (), now, 1, b.opened), True
    if b.probes < limits.probes:
        return replace(b, probes=b.probes + 1), True
    return b, False


def record(b: Breaker, outcomes: Iterable[bool], now: float, limits: Limits) -> Breaker:
    """Fold a batch's outcomes (True: succeeded, False: failed for the model) into `b`."""
    for ok in outcomes:
        b = on_success(b, now, limits) if ok else on_failure(b, now, limits)
    return b


def key(prefix: str, model: str) -> str:
    return f"{prefix}breaker:{model}"


def _decode(raw: bytes | None) -> Breaker:
    if not raw:
        return CLOSED
    data = json.loads(raw)
    return Breaker(
        data["state"], tuple(data["failures"]), data["since"], data["probes"], data["opened"]
    )


def apply(
    client: redis.Redis,
    prefix: str,
    model: str,
    step: Callable[[Breaker, float], tuple[Breaker, T]],
) -> tuple[Breaker, T]:
    """Run `step` on the model's breaker in Redis atomically (WATCH/MULTI, retried on a race)."""
    name = key(prefix, model)

    def transact(pipe: redis.client.Pipeline) -> tuple[Breaker, T]:
        before = _decode(pipe.get(name))
        after, answer = step(before, time.time())
        if after != before:
            pipe.multi()
            pipe.set(name, json.dumps(asdict(after)))
            if after.opened > before.opened:
                metrics.CIRCUIT_OPENED.labels(model).inc()
                log.warning("circuit of %s opened", model)
        return after, answer

    return client.transaction(transact, name, value_from_callable=True)


def record_outcomes(
    client: redis.Redis, prefix: str, spec: ModelSpec, outcomes: list[bool]
) -> Breaker | None:
    """What a worker's written batch says about its model; best-effort (None when Redis did
    not answer: a breaker a little late is better than a failed batch)."""
    if not outcomes:
        return None
    limits = Limits.of(spec)
    try:
        return apply(
            client, prefix, spec.name, lambda b, now: (record(b, outcomes, now, limits), None)
        )[0]
    except redis.RedisError:
        log.warning("could not record outcomes on the circuit of %s", spec.name, exc_info=True)
        return None


def admit(client: redis.Redis, prefix: str, spec: ModelSpec) -> bool:
    """May a new job go to this model? Takes a half-open breaker's probe slot when it says
    yes. A Redis that does not answer admits (the breaker is a hint, not a gate)."""
    limits = Limits.of(spec)
    try:
        return apply(client, prefix, spec.name, lambda b, now: on_admit(b, now, limits))[1]
    except redis.RedisError:
        return True


def read_states(client: redis.Redis, prefix: str, specs: list[ModelSpec]) -> dict[str, State]:
    """Each model's state as of now, in one round trip."""
    if not specs:
        return {}
    raws = client.mget([key(prefix, spec.name) for spec in specs])
    now = time.time()
    return {
        spec.name: current(_decode(raw), now, Limits.of(spec))
        for spec, raw in zip(specs, raws, strict=True)
    }


def read_breakers(client: redis.Redis, prefix: str, names: list[str]) -> dict[str, Breaker]:
    if not names:
        return {}
    raws = client.mget([key(prefix, name) for name in names])
    return {name: _decode(raw) for name, raw in zip(names, raws, strict=True)}
