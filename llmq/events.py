"""Redis channels, streams and heartbeat keys: how processes tell each other that things moved.

Each job has a pub/sub channel (long-poll waits on its "done") and a Redis stream of its text as
it is generated, ending with a "done" entry; the stream lets a late or reconnecting SSE client
replay from the start or from its Last-Event-ID. A batch's line has no stream: nobody watches
a line's tokens, and a million lines' streams would fill Redis for the hour they are kept. Stream entries are written and read only
through the helpers here (`append_text`, `publish_done`, `read_entries`, `read_streams`,
`stream_ended`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import redis

DONE = "done"
TOKEN = "token"
STREAM_TTL_S = 3600
STREAM_MAXLEN = 20_000
PIPELINE_JOBS = 1000  # jobs told per round trip, so a pipeline's buffer stays small


def job_channel(prefix: str, job_id: str) -> str:
    return f"{prefix}job:{job_id}"


def stream_key(prefix: str, job_id: str) -> str:
    return f"{prefix}job:{job_id}:events"


@dataclass(frozen=True)
class StreamEntry:
    """One entry of a job's stream: some text (`TOKEN`) or the end (`DONE`)."""

    id: str  # the Redis entry id, which SSE sends as the event id
    kind: str
    text: str = ""

    @property
    def done(self) -> bool:
        return self.kind == DONE


def _add_entry(pipe: redis.client.Pipeline, key: str, fields: dict[str, str]) -> None:
    pipe.xadd(key, fields, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL_S)


def read_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEntry:
    """An entry as XREAD or XRANGE returns it (bytes, as the clients here are not decoding)."""
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    kind = fields.get(b"type", b"").decode()
    return StreamEntry(ident, kind, fields.get(b"text", b"").decode())


def read_entries(reply: list | None) -> list[StreamEntry]:
    """The entries of an XREAD reply for one stream; none when the read timed out."""
    return [read_entry(i, fields) for i, fields in reply[0][1]] if reply else []


def read_streams(reply: list | None) -> dict[str, list[StreamEntry]]:
    """The entries of an XREAD reply over several streams, by stream key."""
    return {
        (key.decode() if isinstance(key, bytes) else key): [read_entry(i, f) for i, f in entries]
        for key, entries in reply or []
    }


def stream_ended(last: list) -> bool:
    """Given XREVRANGE's last entry: no stream, or one that ends with `DONE`, gets no more."""
    return not last or read_entry(*last[0]).done


def append_text(client: redis.Redis, prefix: str, deltas: dict[str, str]) -> None:
    """Add each job's newly generated text to its stream, in one round trip."""
    if not deltas:
        return
    with client.pipeline(transaction=False) as pipe:
        for job_id, text in deltas.items():
            _add_entry(pipe, stream_key(prefix, job_id), {"type": TOKEN, "text": text})
        pipe.execute()


def cancel_channel(prefix: str) -> str:
    return f"{prefix}cancel"


def worker_key(prefix: str, model: str, node: str) -> str:
    return f"{prefix}worker:{model}:{node}"


def worker_pattern(prefix: str, model: str) -> str:
    return f"{prefix}worker:{model}:*"


def publish_done(
    client: redis.Redis, prefix: str, job_ids: Iterable[str], unstreamed: Collection[str] = ()
) -> None:
    """Tell waiting pollers (long-poll, SSE) that these jobs reached a final state. The jobs
    in `unstreamed` (a batch's lines) get no stream: their end goes to their channel only,
    and an SSE client of one finds it final on its next read of the row."""
    done = json.dumps({"type": DONE})
    ids = list(job_ids)
    for start in range(0, len(ids), PIPELINE_JOBS):  # a cancelled batch's million lines
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + PIPELINE_JOBS]:
                pipe.publish(job_channel(prefix, job_id), done)
                if job_id not in unstreamed:
                    _add_entry(pipe, stream_key(prefix, job_id), {"type": DONE})
            pipe.execute()


def is_done(data: bytes | str) -> bool:
    try:
        return json.loads(data).get("type") == DONE
    except (ValueError, AttributeError):
        return False


def publish_cancel(client: redis.Redis, prefix: str, job_id: str) -> None:
    client.publish(cancel_channel(prefix), job_id)


def live_workers(client: redis.Redis, prefix: str, model: str) -> int:
    return sum(1 for _ in client.scan_iter(match=worker_pattern(prefix, model), count=100))


def live_worker_records(client: redis.Redis, prefix: str) -> list[dict]:
    """Every live worker's heartbeat record (node, model, pid, metrics address), in one scan."""
    keys = list(client.scan_iter(match=f"{prefix}worker:*", count=1000))
    if not keys:
        return []
    records = []
    for raw in client.mget(keys):
        if raw is None:  # expired between the scan and the read
            continue
        with contextlib.suppress(ValueError):
            records.append(json.loads(raw))
    return records


def at_risk_key(prefix: str, batch_id: str) -> str:
    """Redis key the scheduler leader keeps while a batch cannot meet its deadline even at
    its pool's `max_replicas`; it expires unless the leader renews it."""
    return f"{prefix}scheduler:at_risk:{batch_id}"


def pools_key(prefix: str) -> str:
    """Redis hash the scheduler leader writes: model -> its pool's last observed state."""
    return f"{prefix}scheduler:pools"


def leader_key(prefix: str, models: list[str]) -> str:
    """Who leads the schedulers of these pools ("host:pid"), refreshed while it leads."""
    return f"{prefix}scheduler:leader:{','.join(sorted(set(models)))}"


def read_pools(client: redis.Redis, prefix: str) -> dict[str, dict]:
    out = {}
    for model, raw in client.hgetall(pools_key(prefix)).items():
        with contextlib.suppress(ValueError):
            out[model.decode()] = json.loads(raw)
    return out
