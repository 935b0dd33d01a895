"""Every transition of a job's state, and the only place one happens; reads are in
`llmq.job_queries`. One module per mover: a client submits and cancels (`submit`), a worker
claims and holds (`leases`) and writes results (`finish`), a job moves to its fallback model
(`fallback`), the scheduler's feeder takes jobs out of the backlog (`feeds`) and answers a
batch's repeated lines from their leader's (`dedup`), the sweeper moves what nobody else will
(`sweeps`).

A job that ends (finish, cancel) gets its webhook outbox row in the same transaction.

Every write is safe to repeat. A claim is a conditional UPDATE, so a redelivered message
never runs a finished or cancelled job again; a finish is fenced by the claim's attempt
number; the ledger row is unique per job.
"""

from llmq.jobs.dedup import Resolved, resolve_followers
from llmq.jobs.fallback import Hop, move_failed, move_queued
from llmq.jobs.feeds import backlog_candidates, take_from_backlog
from llmq.jobs.finish import Outcome, finish_jobs
from llmq.jobs.leases import claim_jobs, end_leases, release_jobs, renew_leases
from llmq.jobs.submit import (
    NewJob,
    Stopped,
    cancel_batch_jobs,
    cancel_job,
    create_job,
    create_jobs,
    record_answers,
    tokens_to_refund,
)
from llmq.jobs.sweeps import Moved, expire_queued, mark_republished, requeue_orphans

__all__ = [
    "Hop",
    "Moved",
    "NewJob",
    "Outcome",
    "Resolved",
    "Stopped",
    "backlog_candidates",
    "cancel_batch_jobs",
    "cancel_job",
    "claim_jobs",
    "create_job",
    "create_jobs",
    "end_leases",
    "expire_queued",
    "finish_jobs",
    "mark_republished",
    "move_failed",
    "move_queued",
    "record_answers",
    "release_jobs",
    "renew_leases",
    "requeue_orphans",
    "resolve_followers",
    "take_from_backlog",
    "tokens_to_refund",
]
