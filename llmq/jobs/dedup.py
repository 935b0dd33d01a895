"""Equal lines of a batch run once: a follower gets its leader's answer, or takes its place.

At batch create, every greedy line that repeats an earlier line of the batch becomes a
follower of the first (`llmq.batches.records.mark_duplicates`): queued, never in the backlog
nor published, `same_as` naming its leader. The scheduler's feeder resolves followers whose
leader has ended (`resolve_followers`), before it feeds:

- the leader succeeded on the follower's model with its whole answer
  (`llmq.cache.is_whole_answer`): the follower ends succeeded with the leader's text and
  tokens, `cached`, and its own ledger row, priced as an exact-cache hit (the tokens at the
  model's cache-hit price) times the batch price factor, and its webhook outbox row, in one
  transaction;
- otherwise (the leader failed, was cancelled or expired, was cut short, or answered on a
  fallback model): the leader's first follower by `custom_id` goes to the backlog to run
  itself, and the others follow it.

Ended leaders are found by `leads` (an index holds only leaders, by status), never by a scan
of the followers, so a pass costs what it resolves, however many followers still wait. A
leader with more followers than one pass answers keeps `leads` until the last is answered.
Every write is conditional on the follower being still queued, and the ledger row is unique
per job, so a pass repeated after a crash writes nothing twice. A cancel or expiry of the
batch ends followers as any queued line.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from llmq import fallbacks, outbox
from llmq.cache import is_whole_answer
from llmq.catalog import Catalog
from llmq.generation import GenerationParams
from llmq.ledger import token_cost_usd
from llmq.models import FINAL_STATUSES, Job, JobStatus, LedgerEntry


class Fate(StrEnum):
    WAIT = "wait"  # the leader has not ended
    COPY = "copy"  # the leader's answer is the follower's
    PROMOTE = "promote"  # the leader's end answers nothing: a follower runs instead


@dataclass(frozen=True)
class LeaderEnd:
    """What decides a follower's fate: its leader's state and answer, and its own model."""

    status: str
    model: str
    finish_reason: str | None
    completion_tokens: int | None
    max_tokens: int  # the leader's, resolved (the followers' are equal)
    follower_model: str


def fate(leader: LeaderEnd) -> Fate:
    """Copy only a whole answer of the same model; a leader that ended any other way leaves
    its followers to run."""
    if leader.status not in FINAL_STATUSES:
        return Fate.WAIT
    whole = leader.status == JobStatus.SUCCEEDED and is_whole_answer(
        leader.finish_reason, leader.completion_tokens or 0, leader.max_tokens
    )
    return Fate.COPY if whole and leader.model == leader.follower_model else Fate.PROMOTE


@dataclass
class Resolved:
    """What one pass did, for what follows its commit."""

    ended: list[uuid.UUID] = field(default_factory=list)  # followers now succeeded
    promoted: list[uuid.UUID] = field(default_factory=list)  # followers now in the backlog
    batches: list[str] = field(default_factory=list)  # batches of the ended followers


# The leaders' followers still queued, locked (SKIP LOCKED: one a cancel holds waits for
# the next pass), at most :limit of them.
_WAITING = """
    SELECT id FROM jobs WHERE same_as = ANY(:leaders) AND status = 'queued'
     ORDER BY same_as, custom_id, id LIMIT :limit FOR UPDATE SKIP LOCKED
"""
_LEADERS = sa.bindparam("leaders", type_=ARRAY(UUID(as_uuid=True)))

# A follower ends with its leader's answer (the leader is read, not changed).
_COPY = sa.text(
    f"""
    UPDATE jobs SET status = 'succeeded', output_text = leader.output_text,
                    finish_reason = leader.finish_reason, prompt_tokens = leader.prompt_tokens,
                    completion_tokens = leader.completion_tokens, cached = true,
                    finished_at = now()
      FROM jobs AS leader
     WHERE jobs.id IN ({_WAITING}) AND jobs.status = 'queued' AND leader.id = jobs.same_as
    RETURNING jobs.id, jobs.api_key_id, jobs.model, jobs.alias, jobs.variant, jobs.batch_id,
              jobs.prompt_tokens, jobs.completion_tokens
    """
).bindparams(_LEADERS)

# The old leader's first queued follower (by `custom_id`) leads and goes to the backlog; the
# others follow it.
_PROMOTE = sa.text(
    """
    WITH firsts AS (
      SELECT DISTINCT ON (same_as) same_as AS old, id AS new FROM jobs
       WHERE same_as = ANY(:leaders) AND status = 'queued'
       ORDER BY same_as, custom_id, id
    )
    UPDATE jobs SET same_as = NULLIF(firsts.new, jobs.id), leads = jobs.id = firsts.new,
                    in_backlog = jobs.id = firsts.new
      FROM firsts
     WHERE jobs.same_as = firsts.old AND jobs.status = 'queued'
    RETURNING jobs.id, jobs.same_as
    """
).bindparams(_LEADERS)

# A leader none of whose followers is still queued leads no more.
_DONE = sa.text(
    """
    UPDATE jobs SET leads = false
     WHERE id = ANY(:leaders)
       AND NOT EXISTS (SELECT 1 FROM jobs f WHERE f.same_as = jobs.id AND f.status = 'queued')
    """
).bindparams(_LEADERS)


def resolve_followers(
    session: Session, catalog: Catalog, models: list[str], limit: int = 1000
) -> Resolved:
    """One pass over the models' leaders that ended (at most `limit` of them, and `limit`
    followers answered), in the caller's transaction; returns what it did."""
    leaders = session.execute(
        sa.select(
            Job.id,
            Job.status,
            Job.model,
            Job.hops,
            Job.finish_reason,
            Job.completion_tokens,
            Job.params,
        )
        .where(Job.leads, Job.status.in_(FINAL_STATUSES))
        .where(sa.or_(Job.model.in_(models), Job.hops[0]["model"].astext.in_(models)))
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    copy: list[uuid.UUID] = []
    promote: list[uuid.UUID] = []
    for r in leaders:
        params = GenerationParams.from_row(r.params)
        max_tokens = params.max_tokens or catalog.get(r.model).default_max_tokens
        end = LeaderEnd(r.status, r.model, r.finish_reason, r.completion_tokens, max_tokens,
                        fallbacks.origin(r.model, r.hops))  # fmt: skip
        (copy if fate(end) == Fate.COPY else promote).append(r.id)
    resolved = Resolved()
    if copy:
        resolved.ended, resolved.batches = _copy_answers(session, catalog, copy, limit)
    if promote:
        moved = session.execute(_PROMOTE, {"leaders": promote}).all()
        resolved.promoted = [r.id for r in moved if r.same_as is None]
    if leaders:
        session.execute(_DONE, {"leaders": [r.id for r in leaders]})
    return resolved


def _copy_answers(
    session: Session, catalog: Catalog, leaders: list[uuid.UUID], limit: int
) -> tuple[list[uuid.UUID], list[str]]:
    """End up to `limit` of the leaders' followers with their answers, with their ledger and
    webhook outbox rows."""
    ended = session.execute(_COPY, {"leaders": leaders, "limit": limit}).all()
    if not ended:
        return [], []
    session.execute(
        pg_insert(LedgerEntry).on_conflict_do_nothing(index_elements=["job_id"]),
        [
            {
                "job_id": r.id,
                "api_key_id": r.api_key_id,
                "model": r.model,
                "alias": r.alias,
                "variant": r.variant,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "cached": True,
                "cost_usd": hit_cost_usd(
                    catalog, r.model, r.prompt_tokens, r.completion_tokens, r.batch_id is not None
                ),
                "gpu_cost_usd": Decimal(0),
            }
            for r in ended
        ],
    )
    ids = [r.id for r in ended]
    outbox.enqueue_final_events(session, ids)
    return ids, sorted({r.batch_id for r in ended if r.batch_id})


def hit_cost_usd(
    catalog: Catalog, model: str, prompt_tokens: int, completion_tokens: int, batch: bool
) -> Decimal:
    """An answer given without running: its tokens at the model's cache-hit price, times the
    batch price factor for a batch line."""
    spec = catalog.get(model)
    price = spec.price_cache_hit_per_mtok_usd
    return token_cost_usd(prompt_tokens, completion_tokens, price, price, spec.price_factor(batch))
