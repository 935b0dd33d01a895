"""Per-key request and token rates, held in Redis so every API replica shares them.

One Lua script (GCRA, the generic cell rate algorithm) checks every limit of a request and
records it only when all of them pass, atomically and on Redis's own clock. Each limit is one
hash `{tat, interval}` per key. A key may burst up to its whole per-minute quota, then is
held to the steady rate; `RateLimit` headers say what is left.

Tokens are charged at submit from an estimate (prompt estimate + `max_tokens`) and
reconciled when the job ends (`reconcile_tokens`), so the per-minute token rate tracks the
real counts.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import redis

WINDOW_S = 60

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local state = {}
local blocked = 0
local retry = 0
for i = 1, n do
  local limit = tonumber(ARGV[(i - 1) * 3 + 1])
  local period = tonumber(ARGV[(i - 1) * 3 + 2])
  local cost = tonumber(ARGV[(i - 1) * 3 + 3])
  local interval = period / limit
  local stored = redis.call('HGET', KEYS[i], 'tat')
  local tat = now
  if stored then tat = math.max(tonumber(stored), now) end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - period
  if allow_at > now then
    blocked = 1
    retry = math.max(retry, allow_at - now)
  end
  state[i] = {tat, new_tat, interval, period}
end
local out = {blocked, tostring(retry)}
for i = 1, n do
  local tat, new_tat, interval, period = state[i][1], state[i][2], state[i][3], state[i][4]
  local used = tat
  if blocked == 0 then
    used = new_tat
    redis.call('HSET', KEYS[i], 'tat', tostring(new_tat), 'interval', tostring(interval))
    redis.call('PEXPIRE', KEYS[i], math.ceil((new_tat - now) * 1000) + 1000)
  end
  table.insert(out, math.max(0, math.floor((now + period - used) / interval + 1e-9)))
  table.insert(out, tostring(math.max(0, used - now)))
end
return out
"""

_RECONCILE = """
local v = redis.call('HMGET', KEYS[1], 'tat', 'interval')
if not v[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = math.max(now, tonumber(v[1]) + tonumber(ARGV[1]) * tonumber(v[2]))
redis.call('HSET', KEYS[1], 'tat', tostring(tat))
redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) * 1000) + 1000)
return 1
"""


@dataclass(frozen=True)
class Rule:
    """One limit: `quota` units per `window_s`, this request costing `cost` of them."""

    name: str
    quota: int
    cost: int
    window_s: int = WINDOW_S


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int
    remaining: dict[str, int]
    reset_s: dict[str, int]


def limit_key(prefix: str, key_id: uuid.UUID | str, name: str) -> str:
    return f"{prefix}rl:{key_id}:{name}"


def admit(client: redis.Redis, prefix: str, key_id: uuid.UUID | str, rules: list[Rule]) -> Verdict:
    """Check and record every rule at once; nothing is recorded when one of them refuses."""
    if not rules:
        return Verdict(True, 0, {}, {})
    keys = [limit_key(prefix, key_id, r.name) for r in rules]
    args: list[int] = []
    for r in rules:
        args += [r.quota, r.window_s, r.cost]
    out = client.eval(_ADMIT, len(keys), *keys, *args)
    blocked, retry = int(out[0]), float(out[1])
    remaining = {r.name: int(out[2 + 2 * i]) for i, r in enumerate(rules)}
    reset = {r.name: math.ceil(float(out[3 + 2 * i])) for i, r in enumerate(rules)}
    return Verdict(not blocked, max(1, math.ceil(retry)) if blocked else 0, remaining, reset)


def reconcile_tokens(
    client: redis.Redis, prefix: str, key_id: uuid.UUID | str, delta_tokens: int
) -> None:
    """Correct the token rate by what a job really used minus what submit charged."""
    if delta_tokens:
        client.eval(_RECONCILE, 1, limit_key(prefix, key_id, "tpm"), delta_tokens)


def policy_header(rules: list[Rule], max_concurrent: int | None) -> str:
    """IETF `RateLimit-Policy`: `"rpm";q=60;w=60, "tpm";q=10000;w=60`."""
    items = [f'"{r.name}";q={r.quota};w={r.window_s}' for r in rules]
    if max_concurrent is not None:
        items.append(f'"concurrent";q={max_concurrent};qu="concurrent-requests"')
    return ", ".join(items)


def state_header(verdict: Verdict) -> str:
    """IETF `RateLimit`: what is left of each policy and when it is whole again."""
    return ", ".join(
        f'"{name}";r={left};t={verdict.reset_s[name]}' for name, left in verdict.remaining.items()
    )
