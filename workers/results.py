"""The half of a worker loop that turns results into rows and news: one for both loops.

The batch loop (`workers/batch_loop.py`) and the continuous loop (`workers/continuous_loop.py`)
each compose one `ResultWriter`. It streams text as it is generated, prices each result into
an `Outcome`, writes the outcomes of many jobs in one transaction, lets their claims go, and
hands what was committed to `llmq.announce` (done events, webhooks, token rates, metrics).
"""

from __future__ import annotations

import logging
from decimal import Decimal

import redis

from llmq import events, jobs, outbox
from llmq.announce import Announcer, Committed, token_deltas
from llmq.catalog import ModelSpec
from llmq.db import session_scope
from llmq.ledger import token_cost_usd
from llmq.models import Job
from workers.claims import Claims
from workers.engines.base import GenerationResult

log = logging.getLogger(__name__)

SUPERSEDED = "superseded"  # what a task reports when its claim moved on and wrote nothing
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

        Returns what each task reports: the job's outcome, or `superseded` when the finish
        was fenced off (the claim's attempt is no longer current) and nothing was written.
        """
        with session_scope() as session:
            done = set(jobs.finish_jobs(session, outcomes))
            deliveries = outbox.created_in(session)
        self.claims.let_go(claimed)
        written = [out for out in outcomes if out.job_id in done]
        self.stream_rest(written)
        used = {o.job_id: o.prompt_tokens + o.completion_tokens for o in written}
        ended = [job for job in claimed if job.id in used]
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
            )
        )
        reports = {}
        for out in outcomes:
            self.streamed.pop(str(out.job_id), None)
            if out.job_id in done:
                reports[str(out.job_id)] = out.status
            else:
                log.warning("job %s moved on from attempt %d; its result was not written",
                            out.job_id, out.attempt)  # fmt: skip
                reports[str(out.job_id)] = SUPERSEDED
        return reports

    def release(self, claimed: list[Job]) -> None:
        """Give claimed jobs back to the queue when their results could not be written, so
        the tasks' retries can claim them again at once."""
        self.claims.let_go(claimed)
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
        if any(job.attempts > 1 for job in claimed):
            try:
                self.redis.delete(*[events.stream_key(self.prefix, str(j.id)) for j in claimed])
            except redis.RedisError:
                log.warning("could not reset streams", exc_info=True)

    def stream(self, deltas: dict[str, str]) -> None:
        """Publish text as it is generated; a Redis hiccup costs the stream, never the job."""
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
