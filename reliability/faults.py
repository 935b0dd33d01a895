"""The faults the chaos suite injects, one function per kind.

Each returns what it did and a probe: the kind of process it hurt and a check that is true
once that process is back (the suite times it). Workers are found by their heartbeats, the
scheduler leader by the identity it announces.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from reliability.stack import MODELS, Stack

HEARTBEAT_TTL_S = 3.0  # a worker's key lives 3 x LLMQ_WORKER_HEARTBEAT_S


@dataclass
class Fault:
    kind: str
    detail: str
    process: str  # which kind of process must come back: worker, api, scheduler, ...
    back: Callable[[], bool]


def _pick_worker(stack: Stack, rng: random.Random) -> dict | None:
    records = sorted(stack.workers(), key=lambda r: r.get("node", ""))
    if not records:
        return None
    echo = [r for r in records if r.get("model") == "echo"]
    pool = echo if echo and rng.random() < 0.7 else records
    return rng.choice(pool)


def _hurt_a_worker(
    stack: Stack, rng: random.Random, kind: str, verb: str,
    hurt: Callable[[dict], tuple[str, Callable[[], bool]]],
) -> Fault:  # fmt: skip
    """Pick a live worker and hurt it; `hurt` says what it did and when the pool is back."""
    record = _pick_worker(stack, rng)
    if record is None:
        return Fault(kind, f"no live worker to {verb}", "worker", lambda: True)
    detail, back = hurt(record)
    return Fault(kind, detail, "worker", back)


def kill_worker(stack: Stack, rng: random.Random) -> Fault:
    def hurt(record: dict) -> tuple[str, Callable[[], bool]]:
        os.kill(record["pid"], signal.SIGKILL)
        model, node = record["model"], record["node"]
        # back once another worker of the model has a heartbeat
        return f"SIGKILL {node} (pid {record['pid']})", lambda: any(
            r.get("node") != node for r in stack.workers(model)
        )

    return _hurt_a_worker(stack, rng, "kill-worker", "kill", hurt)


def stop_worker(stack: Stack, rng: random.Random) -> Fault:
    """SIGSTOP a worker until its heartbeat has expired and the sweeper has looked, then go on."""

    def hurt(record: dict) -> tuple[str, Callable[[], bool]]:
        pause_s = HEARTBEAT_TTL_S + rng.uniform(1.5, 4.0)
        os.kill(record["pid"], signal.SIGSTOP)
        time.sleep(pause_s)
        os.kill(record["pid"], signal.SIGCONT)
        model, node = record["model"], record["node"]
        # back once the same worker announces itself again
        return f"SIGSTOP {node} for {pause_s:.1f}s", lambda: any(
            r.get("node") == node for r in stack.workers(model)
        )

    return _hurt_a_worker(stack, rng, "stop-worker", "stop", hurt)


def kill_api(stack: Stack, rng: random.Random) -> Fault:
    assert stack.api is not None
    pid = stack.api.pid
    stack.api.kill()
    return Fault("kill-api", f"SIGKILL the API (pid {pid})", "api", stack.api_ready)


def kill_scheduler(stack: Stack, rng: random.Random) -> Fault:
    leader = stack.leader_process()
    identity = stack.leader()
    if leader is None:
        return Fault("kill-scheduler", f"no leader process found ({identity})", "scheduler",
                     lambda: stack.leader() is not None)  # fmt: skip
    leader.kill()
    return Fault(
        "kill-scheduler",
        f"SIGKILL the leader {identity}",
        "scheduler",
        lambda: stack.leader() not in (None, identity),
    )


def kill_sender(stack: Stack, rng: random.Random) -> Fault:
    assert stack.sender is not None
    pid = stack.sender.pid
    stack.sender.kill()
    return Fault("kill-sender", f"SIGKILL the webhook sender (pid {pid})", "webhook-sender",
                 stack.sender_ready)  # fmt: skip


def _redis_back(stack: Stack) -> Callable[[], bool]:
    return lambda: stack.api_ready() and all(stack.workers(m) for m in MODELS)


def restart_redis_keep(stack: Stack, rng: random.Random) -> Fault:
    took = stack.redis_server.restart(keep_data=True)
    return Fault("redis-restart-keep", f"SAVE, SIGKILL, start ({took:.1f}s)", "redis",
                 _redis_back(stack))  # fmt: skip


def restart_redis_lose(stack: Stack, rng: random.Random) -> Fault:
    took = stack.redis_server.restart(keep_data=False)
    return Fault("redis-restart-lose", f"SIGKILL, data deleted, start ({took:.1f}s)", "redis",
                 _redis_back(stack))  # fmt: skip


def restart_postgres(stack: Stack, rng: random.Random) -> Fault:
    took = stack.postgres.restart()
    return Fault("postgres-restart", f"immediate stop, start ({took:.1f}s)", "postgres",
                 lambda: stack.api_ready() and stack.leader() is not None)  # fmt: skip


FAULTS: dict[str, Callable[[Stack, random.Random], Fault]] = {
    "kill-worker": kill_worker,
    "stop-worker": stop_worker,
    "kill-api": kill_api,
    "kill-scheduler": kill_scheduler,
    "kill-sender": kill_sender,
    "redis-restart-keep": restart_redis_keep,
    "redis-restart-lose": restart_redis_lose,
    "postgres-restart": restart_postgres,
}
