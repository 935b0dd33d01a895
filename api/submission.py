"""Turning a submit body into an admitted job: checks, estimates, limits, budget, idempotency.

Shared by `POST /v1/jobs` and `POST /v1/jobs/bulk` (`Submission` is what both routes depend
on). Order: validation (catalog, sizes, the webhook URL), the token estimate, then one
transaction for the idempotency key (a replay stops here, charged nothing), the Redis rate
limits, the concurrency limit, the budget reservation and the rows; then the messages are
published, and a failed publish leaves the committed jobs to the sweeper. A job whose model's
interactive queue is full (`llmq.queues.interactive_room`) is written to the backlog instead,
for the scheduler's feeder to publish; the response is the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery
from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel

from api import deps, ratelimits
from api.schemas import JobCreate
from llmq import admission, budgets, idempotency, job_checks, jobs, metrics, ssrf
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.errors import InvalidField
from llmq.keys import Caller
from llmq.queues import Message, interactive_room, publish_generate, publish_generate_many
from llmq.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    new: jobs.NewJob
    reserved_tokens: int


def validate_submit(body: JobCreate, catalog: Catalog, settings: Settings) -> jobs.NewJob:
    """Checks only the catalog and settings can make; returns the job, `max_tokens` resolved."""
    job_checks.check_model(body.model, catalog)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidField("prompt", "give exactly one of `prompt` or `messages`")
    new = job_checks.check_job(body.to_new_job(body.max_tokens), catalog, settings.max_prompt_chars)
    if body.expires_in_s is not None and body.expires_in_s > settings.max_expires_in_s:
        raise InvalidField("expires_in_s", f"at most {settings.max_expires_in_s} seconds")
    return new


def webhook_resolver(bodies: list[JobCreate], settings: Settings) -> ssrf.Resolver:
    """The webhook hostnames of a request, each resolved once, concurrently, under one
    deadline (`LLMQ_WEBHOOK_RESOLVE_DEADLINE_S`)."""
    return ssrf.resolve_hosts(
        (str(body.webhook_url) for body in bodies if body.webhook_url is not None),
        settings.webhook_resolve_deadline_s,
        settings.webhook_resolve_concurrency,
    )


def prepare(
    body: JobCreate,
    caller: Caller,
    catalog: Catalog,
    settings: Settings,
    resolve: ssrf.Resolver | None = None,
) -> Prepared:
    """Validate one body and work out what it reserves: worst-case tokens and cost. `resolve`
    answers for the webhook's host (see `webhook_resolver`)."""
    new = validate_submit(body, catalog, settings)
    if body.webhook_url is not None:
        try:
            ssrf.check_url(
                str(body.webhook_url), settings, resolve or webhook_resolver([body], settings)
            )
        except ssrf.UnsafeUrl as exc:
            raise InvalidField("webhook_url", str(exc)) from None
    return reserve(new, caller, catalog, settings, body.expires_in_s)


def reserve(
    new: jobs.NewJob,
    caller: Caller,
    catalog: Catalog,
    settings: Settings,
    expires_in_s: int | None = None,
    max_tokens_field: str = "max_tokens",
) -> Prepared:
    """What a checked job (`job_checks.check_job`) reserves: worst-case tokens and cost,
    and when it expires if no worker takes it."""
    spec = catalog.get(new.model)
    max_tokens = new.params.max_tokens or spec.default_max_tokens
    prompt_tokens = budgets.estimate_prompt_tokens(
        job_checks.input_bytes(new), len(new.messages or []), spec.context_length
    )
    reserved_tokens = prompt_tokens + max_tokens
    tpm = caller.limits.tpm
    if tpm is not None and reserved_tokens > tpm:
        raise InvalidField(
            max_tokens_field,
            f"the job may use {reserved_tokens} tokens (prompt estimate + max_tokens); "
            f"this key allows {tpm} per minute",
        )
    new.expires_at = datetime.now(UTC) + timedelta(
        seconds=expires_in_s or settings.default_expires_in_s
    )
    new.reserved_tokens = reserved_tokens
    new.reserved_cost_usd = budgets.worst_case_cost_usd(
        prompt_tokens, max_tokens, spec.price_input_per_mtok_usd, spec.price_output_per_mtok_usd
    )
    return Prepared(new, reserved_tokens)


def check_total_tokens(prepared: list[Prepared], caller: Caller, field: str) -> None:
    """Jobs admitted together must fit the key's per-minute tokens together."""
    tokens = sum(p.reserved_tokens for p in prepared)
    tpm = caller.limits.tpm
    if tpm is not None and tokens > tpm:
        raise InvalidField(
            field, f"the jobs may use {tokens} tokens; this key allows {tpm} per minute"
        )


class RateCharge:
    """The key's request and token rates for one submit. Admission calls it once it knows
    the request is not an idempotent replay (a replay is never charged); `refund` gives the
    tokens back if the request does not become jobs after all."""

    def __init__(self, request: Request, caller: Caller, tokens: int) -> None:
        self.request, self.caller, self.tokens = request, caller, tokens
        self.headers: dict[str, str] = {}
        self.charged = False

    def __call__(self) -> None:
        self.headers = ratelimits.enforce(self.request, self.caller, self.tokens)
        self.charged = True

    def refund(self) -> None:
        if self.charged:
            self.charged = False
            ratelimits.refund_tokens(self.request, self.caller, self.tokens)


def publish(celery: Celery, messages: list[Message]) -> None:
    """Put committed jobs' messages on their queues.

    A failure here never undoes the submit. The rows are committed as queued, and the
    sweeper publishes every queued job whose message it cannot find, so the jobs run once
    the queue answers. Withdrawing them instead would be wrong: a publish can fail after
    Redis took the message, and the client's retry would then make a second job and pay
    twice.
    """
    try:
        if len(messages) == 1:
            publish_generate(celery, messages[0])
        else:
            publish_generate_many(celery, messages)
    except Exception as exc:  # whatever kombu raises, the jobs are safe in Postgres
        log.warning(
            "%d job(s) committed but not published (%s); the sweeper will publish them",
            len(messages), type(exc).__name__,
        )  # fmt: skip


def hold_over_room(client: redis.Redis, prefix: str, new_jobs: list[jobs.NewJob]) -> None:
    """Mark for the backlog the jobs their model's interactive queue has no room for; the
    others go straight to the queue. One Redis round trip per model; with no answer (no
    feeder, or Redis down) every job is published at once, as without a backlog."""
    for model in dict.fromkeys(new.model for new in new_jobs):
        try:
            room = interactive_room(client, model, prefix)
        except redis.RedisError:
            room = None
        if room is None:
            continue
        for new in [n for n in new_jobs if n.model == model][max(room, 0) :]:
            new.in_backlog = True


class Submission:
    """What both submit routes need, as one FastAPI dependency: the caller, the catalog and
    settings, the `Idempotency-Key`, and the steps after validation."""

    def __init__(
        self,
        request: Request,
        response: Response,
        idempotency_key: str | None = Header(None, alias=idempotency.HEADER),
        caller: Caller = Depends(deps.caller),
        catalog: Catalog = Depends(deps.catalog),
        settings: Settings = Depends(deps.settings),
    ) -> None:
        self.request, self.response, self.idempotency_key = request, response, idempotency_key
        self.caller, self.catalog, self.settings = caller, catalog, settings

    def prepare(self, body: JobCreate, resolve: ssrf.Resolver | None = None) -> Prepared:
        return prepare(body, self.caller, self.catalog, self.settings, resolve)

    def reserve(self, new: jobs.NewJob, max_tokens_field: str = "max_tokens") -> Prepared:
        return reserve(new, self.caller, self.catalog, self.settings, None, max_tokens_field)

    def claim(self, body: BaseModel) -> idempotency.Claim | None:
        """The request's idempotency claim (None without the header); 400 when malformed."""
        key = idempotency.parse_header(self.idempotency_key)
        if key is None:
            return None
        return idempotency.Claim(key, idempotency.fingerprint(body.model_dump(mode="json")))

    def admit(
        self, prepared: list[Prepared], claim: idempotency.Claim | None
    ) -> admission.Admitted:
        """Charge the key's rates, admit the jobs (admission refunds the charge if they are
        not made), set the response's rate and replay headers, and publish new jobs."""
        new_jobs = [p.new for p in prepared]
        hold_over_room(self.request.app.state.sync_redis, self.settings.redis_prefix, new_jobs)
        charge = RateCharge(self.request, self.caller, sum(p.reserved_tokens for p in prepared))
        retention = timedelta(hours=self.settings.idempotency_retention_h)
        admitted = admission.admit(session_scope, self.caller, new_jobs, claim, retention, charge)
        self.response.headers.update(charge.headers)
        if admitted.replayed:
            self.response.headers["Idempotent-Replayed"] = "true"
            return admitted
        messages = [
            Message(str(i), new.model, new.priority)
            for i, new in zip(admitted.ids, new_jobs, strict=True)
            if not new.in_backlog
        ]
        if messages:
            publish(self.request.app.state.celery, messages)
        for new in new_jobs:
            metrics.JOBS_SUBMITTED.labels(new.model).inc()
        return admitted
