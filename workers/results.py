"""The half of a worker loop that turns results into rows and news: one for both loops.

The batch loop (`workers/batch_loop.py`) and the continuous loop (`workers/continuous_loop.py`)
each compose one `ResultWriter`. It streams text as it is generated, prices each result into
an `Outcome`, writes the outcomes of many jobs in one transaction, lets their claims go, and
hands what was committed to `llmq.announce` (done events, webhooks, token rates, metrics).
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

import redis

from llmq import breakers, events, fallbacks, jobs, metrics, outbox
from llmq.announce import Announcer, Committed, token_deltas
from llmq.cache import Answer, is_whole_answer
from llmq.catalog import ModelSpec, get_catalog
from llmq.db import session_scope
from llmq.ledger import token_cost_usd
from llmq.models import Job
from workers.claims import Claims
from workers.engines.base import GenerationResult

log = logging.getLogger(__name__)

SUPERSEDED = "superseded"  # what a task reports when its claim moved on and wrote nothing
MOVED = "moved"  # what a task reports when its job failed here and went to a fallback model
# What an outcome takes from the engine's result as it is.
RESULT_FIELDS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "error")


class ResultWriter:
    def __init__(
        self,
        spec: ModelSpec,
        client: redis.Redis,
        prefix: str,
        claims: Claims,
        announcer: Announcer,
    ) -> None:
        self.spec, self.redis, self.prefix = spec, client, prefix
        self.claims, self.announcer = claims, announcer
        self.streamed: dict[str, str] = {}  # job id -> text already on its stream
        self.unstreamed: set[str] = set()  # claimed batch lines: no stream (`llmq.events`)

    def outcome(
        self, job: Job, result: GenerationResult, seconds: float, gpu_cost: Decimal
    ) -> jobs.Outcome:
        """What is written for one job: the result, its timing and its price."""
        cost = Decimal(0)
        if result.succeeded:
            cost = token_cost_usd(
                result.prompt_tokens,
                result.completion_tokens,
                self.spec.price_input_per_mtok_usd,
                self.spec.price_output_per_mtok_usd,
                self.spec.price_factor(job.batch_id is not None),
            )
        fields = {name: getattr(result, name) for name in RESULT_FIELDS}
        return jobs.Outcome(
            job.id, job.attempts, result.succeeded, **fields,
            inference_ms=int(seconds * 1000), batch_size=result.batch_size,
            cost_usd=cost, gpu_cost_usd=gpu_cost,
        )  # fmt: skip

    def write(self, claimed: list[Job], outcomes: list[jobs.Outcome]) -> dict[str, str]:
        """One transaction for the results, then what follows a commit.

        A job that failed for a reason the model answers for moves to the next model of its
        fallback chain instead of ending (`llmq.jobs.fallback`), in the same transaction; it
        writes no ledger row here. After the commit the model's circuit breaker learns
        how the batch went.

        Returns what each task reports: the job's outcome, `moved` when it went to a
        fallback, or `superseded` when the finish was fenced off (the claim's attempt is no
        longer current) and nothing was written.
        """
        hops = self.fallback_hops(claimed, outcomes)
        with session_scope() as session:
            moved = jobs.move_failed(session, hops)
            moved_ids = {m.id for m in moved}
            done = set(
                jobs.finish_jobs(session, [o for o in outcomes if o.job_id not in moved_ids])
            )
            deliveries = outbox.created_in(session)
        self.claims.let_go(claimed)
        self.judge(outcomes, done | moved_ids)
        for hop in hops:
            if hop.job_id in moved_ids:
                metrics.FALLBACKS.labels(self.spec.name, hop.to, hop.reason).inc()
        written = [out for out in outcomes if out.job_id in done]
        self.stream_rest(written)
        used = {o.job_id: o.prompt_tokens + o.completion_tokens for o in written}
        ended = [job for job in claimed if job.id in used]
        outcome_of = {out.job_id: out for out in written}
        self.announcer.announce(
            Committed(
                ended=[str(out.job_id) for out in written],
                deliveries=deliveries,
                token_deltas=token_deltas(
                    (job.api_key_id, job.reserved_tokens, used[job.id]) for job in ended
                ),
                outcomes=written,
                model=self.spec.name,
                batches=sorted({job.batch_id for job in ended if job.batch_id}),
                answers=answers_to_keep(ended, outcome_of, self.spec.default_max_tokens),
                moved=[m.message() for m in moved],
                unstreamed={str(job.id) for job in ended if job.batch_id},
            )
        )
        reports = {}
        for out in outcomes:
            self.streamed.pop(str(out.job_id), None)
            self.unstreamed.discard(str(out.job_id))
            if out.job_id in moved_ids:
                reports[str(out.job_id)] = MOVED
            elif out.job_id in done:
                reports[str(out.job_id)] = out.status
            else:
                log.warning("job %s moved on from attempt %d; its result was not written",
                            out.job_id, out.attempt)  # fmt: skip
                reports[str(out.job_id)] = SUPERSEDED
        return reports

    def fallback_hops(self, claimed: list[Job], outcomes: list[jobs.Outcome]) -> list[jobs.Hop]:
        """Where each job that failed for the model's sake goes next; none for a job whose
        chain is exhausted (it fails with this error)."""
        failed = [o for o in outcomes if not o.succeeded and breakers.counts_against_model(o.error)]
        if not failed:
            return []
        catalog = get_catalog()
        by_id = {job.id: job for job in claimed}
        chains = {
            job.id: fallbacks.chain(catalog, fallbacks.origin(job.model, job.hops))
            for job in (by_id[o.job_id] for o in failed)
        }
        names = sorted({m for c in chains.values() for m in c if m in catalog})
        try:
            states = breakers.read_states(
                self.redis, self.prefix, [catalog.get(name) for name in names]
            )
        except redis.RedisError:
            states = {}
        hops = []
        for out in failed:
            job = by_id[out.job_id]
            tried = [hop["model"] for hop in job.hops or []] + [job.model]
            to = fallbacks.next_model(chains[out.job_id], tried, states)
            if to is not None:
                reason = (out.error or {}).get("code", "failed")
                hops.append(jobs.Hop(job.id, job.attempts, to, reason, out.error))
        return hops

    def judge(self, outcomes: list[jobs.Outcome], written: set) -> None:
        """Tell the model's circuit breaker how the written jobs went: a success, or a failure
        the model answers for (a job's own bad input is neither)."""
        verdicts = [
            out.succeeded
            for out in outcomes
            if out.job_id in written and (out.succeeded or breakers.counts_against_model(out.error))
        ]
        breakers.record_outcomes(self.redis, self.prefix, self.spec, verdicts)

    def release(self, claimed: list[Job]) -> None:
        """Give claimed jobs back to the queue when their results could not be written, so
        the tasks' retries can claim them again at once."""
        self.claims.let_go(claimed)
        self.unstreamed.difference_update(str(job.id) for job in claimed)
        try:
            with session_scope() as session:
                jobs.release_jobs(session, [(job.id, job.attempts) for job in claimed])
        except Exception:
            log.exception(
                "could not release %d claimed jobs; their lease will expire", len(claimed)
            )

    def reset_streams(self, claimed: list[Job]) -> None:
        """A job claimed again starts its stream afresh, so the stream matches this attempt."""
        for job in claimed:
            self.streamed.pop(str(job.id), None)
        self.unstreamed.update(str(job.id) for job in claimed if job.batch_id)
        if any(job.attempts > 1 for job in claimed):
            try:
                self.redis.delete(*[events.stream_key(self.prefix, str(j.id)) for j in claimed])
            except redis.RedisError:
                log.warning("could not reset streams", exc_info=True)

    def stream(self, deltas: dict[str, str]) -> None:
        """Publish text as it is generated; a Redis hiccup costs the stream, never the job.
        A batch line's text goes nowhere until its result is written."""
        deltas = {k: v for k, v in deltas.items() if k not in self.unstreamed}
        for job_id, text in deltas.items():
            self.streamed[job_id] = self.streamed.get(job_id, "") + text
        try:
            events.append_text(self.redis, self.prefix, deltas)
        except redis.RedisError:
            log.warning("could not publish streamed text", exc_info=True)

    def stream_rest(self, outcomes: list[jobs.Outcome]) -> None:
        """Whatever final text the stream has not carried yet (held-back tails)."""
        rest = {}
        for out in outcomes:
            sent = self.streamed.get(str(out.job_id), "")
            if out.text and out.text.startswith(sent) and len(out.text) > len(sent):
                rest[str(out.job_id)] = out.text[len(sent) :]
        self.stream(rest)


def answers_to_keep(
    ended: list[Job], outcome_of: dict[uuid.UUID, jobs.Outcome], default_max_tokens: int
) -> dict[str, Answer]:
    """The exact-cache entries of the ended jobs that were given a cache key and answered
    whole (`llmq.cache.is_whole_answer`): never a cancelled or time-bound one."""
    answers = {}
    for job in ended:
        out = outcome_of[job.id]
        max_tokens = job.params.max_tokens or default_max_tokens
        if (
            job.cache_key
            and out.succeeded
            and is_whole_answer(out.finish_reason, out.completion_tokens, max_tokens)
        ):
            answers[job.cache_key] = Answer(
                out.text or "", out.finish_reason, out.prompt_tokens, out.completion_tokens
            )
    return answers
