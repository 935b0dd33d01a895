"""Turning a submit body into an admitted job: checks, estimates, limits, budget, idempotency.

Shared by `POST /v1/jobs`, `POST /v1/jobs/bulk` and the OpenAI routes (`Submission` is what
they depend on). Order: validation (catalog, sizes, the webhook URL), the token estimate, the
exact cache (`llmq.cache`: a determined job's answer, if one is stored), then one transaction
for the idempotency key (a replay stops here, charged nothing), the Redis rate limits, the
concurrency limit, the budget reservation and the rows; then the messages are published, and a
failed publish leaves the committed jobs to the sweeper. A job the cache answered is created
final and is not published; what follows its commit is announced as for any job that ended.
A job whose model's interactive queue is full (`llmq.queues.interactive_room`) is written to
the backlog instead, for the scheduler's feeder to publish; the response is the same.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery
from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel
from redis.exceptions import RedisError

from api import deps, ratelimits
from api.schemas import JobCreate
from llmq import (
    admission,
    breakers,
    budgets,
    cache,
    events,
    fallbacks,
    idempotency,
    job_checks,
    jobs,
    metrics,
    ssrf,
)
from llmq import messages as task_messages
from llmq.announce import Committed
from llmq.catalog import Catalog
from llmq.db import session_scope
from llmq.errors import InvalidField
from llmq.generation import GenerationParams
from llmq.job_queries import IDLE, activity_by_model
from llmq.keys import Caller
from llmq.ledger import token_cost_usd
from llmq.queues import Message, interactive_room
from llmq.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    new: jobs.NewJob
    reserved_tokens: int
    cache: bool = True  # the body's `cache`: false keeps the job out of the exact cache


def validate_submit(
    body: JobCreate, catalog: Catalog, settings: Settings, key_id: str = ""
) -> jobs.NewJob:
    """Checks only the catalog and settings can make; returns the job, an alias and
    `max_tokens` resolved (`key_id`: whose job, for an alias sticky per key)."""
    job_checks.check_model(body.model, catalog)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidField("prompt", "give exactly one of `prompt` or `messages`")
    new = job_checks.check_job(
        body.to_new_job(body.max_tokens), catalog, settings.max_prompt_chars, key_id=key_id
    )
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
    route: Callable[[jobs.NewJob], None] | None = None,
) -> Prepared:
    """Validate one body and work out what it reserves: worst-case tokens and cost. `resolve`
    answers for the webhook's host (see `webhook_resolver`); `route` may move the job to a
    fallback model (`steer`) before its reservation is priced."""
    new = validate_submit(body, catalog, settings, str(caller.key_id))
    if body.webhook_url is not None:
        try:
            ssrf.check_url(
                str(body.webhook_url), settings, resolve or webhook_resolver([body], settings)
            )
        except ssrf.UnsafeUrl as exc:
            raise InvalidField("webhook_url", str(exc)) from None
    if route is not None:
        route(new)
    prepared = reserve(new, caller, catalog, settings, body.expires_in_s)
    return dataclasses.replace(prepared, cache=body.cache)


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


def steer(new: jobs.NewJob, catalog: Catalog, client: redis.Redis, settings: Settings) -> None:
    """Send a job whose model cannot take it now (its circuit is open, or its queue has
    waited past `fallback_after_queue_s`) to the first fallback that can, recording the hop.
    Only models with `fallbacks` pay for the look-up; a half-open model's probe slot is
    taken here, when the job is let through to it."""
    spec = catalog.get(new.model)
    if not spec.fallbacks:
        return
    chain = fallbacks.chain(catalog, new.model)
    oldest = None
    if spec.fallback_after_queue_s is not None:
        with session_scope() as session:
            oldest = activity_by_model(session, [new.model]).get(new.model, IDLE).oldest_queued_s
    crowded = oldest is not None and oldest > (spec.fallback_after_queue_s or 0)
    admitted = crowded or breakers.admit(client, settings.redis_prefix, spec)
    try:
        states = breakers.read_states(
            client, settings.redis_prefix, [catalog.get(name) for name in spec.fallbacks]
        )
    except redis.RedisError:
        states = {}
    to, reason = fallbacks.at_submit(chain, admitted, oldest, spec.fallback_after_queue_s, states)
    if reason is not None:
        new.hops = [
            {"model": new.model, "to": to, "reason": reason, "at": datetime.now(UTC).isoformat()}
        ]
        metrics.FALLBACKS.labels(new.model, to, reason).inc()
        new.model = to


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


def publish(celery: Celery, client: redis.Redis, prefix: str, messages: list[Message]) -> None:
    """Put committed jobs' messages, and their task-sent events, on their queues in one
    Redis round trip (`llmq.messages`).

    A failure here never undoes the submit. The rows are committed as queued, and the
    sweeper publishes every queued job whose message it cannot find, so the jobs run once
    the queue answers. Withdrawing them instead would be wrong: a publish can fail after
    Redis took the message, and the client's retry would then make a second job and pay
    twice.
    """
    try:
        task_messages.publish(celery, client, prefix, messages)
    except Exception as exc:  # whatever Redis raises, the jobs are safe in Postgres
        log.warning(
            "%d job(s) committed but not published (%s); the sweeper will publish them",
            len(messages), type(exc).__name__,
        )  # fmt: skip


def resolved_params(new: jobs.NewJob, default_max_tokens: int) -> GenerationParams:
    """The job's parameters with `max_tokens` written out, as the caches key them."""
    return new.params.model_copy(update={"max_tokens": new.params.max_tokens or default_max_tokens})


def answer_key(new: jobs.NewJob, catalog: Catalog, scope: str, revision: str | None = None) -> str:
    """The exact-cache key of a job (`llmq.cache.cache_key`): equal for requests that
    determine the same answer. `revision`: the model's, when the caller has it already."""
    spec = catalog.get(new.model)
    params = resolved_params(new, spec.default_max_tokens)
    revision = revision if revision is not None else cache.model_revision(spec)
    return cache.cache_key(new.model, revision, scope, new.prompt, new.messages, params)


def dedup_keys(catalog: Catalog, key_id: uuid.UUID) -> Callable[[jobs.NewJob], str | None]:
    """A batch line's key for running equal lines once (None: the line always runs), each
    model's revision computed once per batch. Only a greedy line gets one: seeded lines that
    repeat within one request are each expected to differ (`llmq.cache.usable`), and a seeded
    line that does not repeat has nothing to share."""
    revisions: dict[str, str] = {}

    def key(new: jobs.NewJob) -> str | None:
        if not new.params.greedy:
            return None
        if new.model not in revisions:
            revisions[new.model] = cache.model_revision(catalog.get(new.model))
        return answer_key(new, catalog, str(key_id), revisions[new.model])

    return key


def hold_over_room(
    client: redis.Redis, prefix: str, api_key_id: uuid.UUID, new_jobs: list[jobs.NewJob]
) -> None:
    """Mark for the backlog the jobs their model's interactive queue has no room for, or
    whose key the feeder holds back (past its fair share); the others go straight to the
    queue. One Redis round trip per model; with no answer (no feeder, or Redis down) every
    job is published at once, as without a backlog."""
    for model in dict.fromkeys(new.model for new in new_jobs):
        try:
            room = interactive_room(client, model, prefix, str(api_key_id))
        except redis.RedisError:
            room = None
        if room is None:
            continue
        for new in [n for n in new_jobs if n.model == model][max(room, 0) :]:
            new.in_backlog = True


def count_submitted(new_jobs: list[jobs.NewJob]) -> None:
    """The submit counters, one increment per model and counter rather than per job (with
    several API processes each increment is a write to a shared file)."""
    counts = Counter(
        (counter, new.model)
        for new in new_jobs
        for counter in (
            metrics.JOBS_SUBMITTED,
            None if new.cache_key is None
            else metrics.CACHE_MISSES if new.answer is None else metrics.CACHE_HITS,
        )
        if counter is not None
    )  # fmt: skip
    for (counter, model), n in counts.items():
        counter.labels(model).inc(n)


class Submission:
    """What both submit routes need, as one FastAPI dependency (`submission`): the caller,
    the catalog and settings, the `Idempotency-Key`, and the steps after validation."""

    def __init__(
        self,
        request: Request,
        response: Response,
        idempotency_key: str | None,
        cache_control: str | None,
        caller: Caller,
        catalog: Catalog,
        settings: Settings,
    ) -> None:
        self.request, self.response, self.idempotency_key = request, response, idempotency_key
        self.cache_control = cache_control
        self.caller, self.catalog, self.settings = caller, catalog, settings

    def prepare(self, body: JobCreate, resolve: ssrf.Resolver | None = None) -> Prepared:
        return prepare(body, self.caller, self.catalog, self.settings, resolve, self.steer)

    def reserve(self, new: jobs.NewJob, max_tokens_field: str = "max_tokens") -> Prepared:
        self.steer(new)
        return reserve(new, self.caller, self.catalog, self.settings, None, max_tokens_field)

    def steer(self, new: jobs.NewJob) -> None:
        steer(new, self.catalog, self.request.app.state.sync_redis, self.settings)

    def claim(self, body: BaseModel) -> idempotency.Claim | None:
        """The request's idempotency claim (None without the header); 400 when malformed."""
        key = idempotency.parse_header(self.idempotency_key)
        if key is None:
            return None
        return idempotency.Claim(key, idempotency.fingerprint(body.model_dump(mode="json")))

    def admit(
        self, prepared: list[Prepared], claim: idempotency.Claim | None
    ) -> admission.Admitted:
        """Look the jobs up in the exact cache, charge the key's rates, admit the jobs
        (admission refunds the charge if they are not made), set the response's rate and
        replay headers, publish the new jobs the cache did not answer and announce those it
        did."""
        new_jobs = [p.new for p in prepared]
        self.consult_cache(prepared)
        to_run = [new for new in new_jobs if new.answer is None]
        hold_over_room(
            self.request.app.state.sync_redis, self.settings.redis_prefix, self.caller.key_id,
            to_run,
        )  # fmt: skip
        # A cache hit is charged its answer's real tokens, a job to run its worst case.
        charge = RateCharge(
            self.request, self.caller, sum(n.reserved_tokens or 0 for n in new_jobs)
        )
        retention = timedelta(hours=self.settings.idempotency_retention_h)
        admitted = admission.admit(self.caller, new_jobs, claim, retention, charge)
        self.response.headers.update(charge.headers)
        if admitted.replayed:
            self.response.headers[idempotency.REPLAYED] = "true"
            return admitted
        messages = [
            Message(str(i), new.model, new.priority)
            for i, new in zip(admitted.ids, new_jobs, strict=True)
            if new.answer is None and not new.in_backlog
        ]
        if messages:
            state = self.request.app.state
            publish(state.celery, state.sync_redis, self.settings.redis_prefix, messages)
        count_submitted(new_jobs)
        if admitted.answered:
            self.announce_answered(admitted, new_jobs)
        return admitted

    def consult_cache(self, prepared: list[Prepared]) -> None:
        """Give each determined job that may use the exact cache its key, and the stored
        answer if there is one: the job then reserves the answer's tokens at the model's
        cache-hit price. Without Redis every job is a miss."""
        store = cache.AnswerCache.for_settings(self.settings, self.request.app.state.sync_redis)
        if not store.enabled or cache.no_store(self.cache_control):
            return
        keys = cache.usable([self.cache_key(p) for p in prepared], [p.new.params for p in prepared])
        wanted = sorted({k for k in keys if k is not None})
        try:
            answers = dict(zip(wanted, store.get_many(wanted), strict=True))
        except RedisError:
            log.warning("the exact cache could not be read; %d job(s) run", len(wanted))
            answers = {}
        for p, key in zip(prepared, keys, strict=True):
            p.new.cache_key = key
            answer = answers.get(key) if key is not None else None
            if answer is not None:
                self.answer_from_cache(p.new, answer)
        self.consult_semantic_cache([p.new for p in prepared if p.new.cache_key], store)

    def answer_from_cache(self, new: jobs.NewJob, answer: cache.Answer) -> None:
        """The job ends at admission with this answer, reserving its tokens at the model's
        cache-hit price."""
        price = self.catalog.get(new.model).price_cache_hit_per_mtok_usd
        new.answer, new.reserved_tokens = answer, answer.tokens
        new.finished_at = datetime.now(UTC)
        new.reserved_cost_usd = token_cost_usd(
            answer.prompt_tokens, answer.completion_tokens, price, price
        )

    def consult_semantic_cache(self, cacheable: list[jobs.NewJob], store: cache.AnswerCache):
        """For the exact cache's misses on a model with a `semantic_cache_threshold`: the
        nearest earlier prompt of the same scope, model revision and parameters. At or above
        the threshold its answer, while the exact cache still keeps it, is this job's, with
        the similarity recorded. A miss is added, pointing at the job's own exact-cache key,
        so its answer serves later paraphrases once a worker keeps it."""
        semantic = self.request.app.state.semantic_cache
        todo = [
            new
            for new in cacheable
            if new.answer is None and self.catalog.get(new.model).semantic_cache_threshold
        ]
        if semantic is None or not todo:
            return
        from llmq import embeddings  # numpy and MiniLM's weights: only for models that use it

        scope = cache.scope(self.caller.key_id, self.settings.cache_shared_across_keys)
        vectors = embeddings.embed([cache.semantic_text(n.prompt, n.messages) for n in todo])
        for new, vector in zip(todo, vectors, strict=True):
            spec = self.catalog.get(new.model)
            params = resolved_params(new, spec.default_max_tokens)
            namespace = cache.semantic_namespace(new.model, cache.model_revision(spec), params)
            try:
                hit = semantic.lookup(scope, namespace, vector, spec.semantic_cache_threshold)
                answer = store.get_many([hit.payload])[0] if hit is not None else None
                if answer is None:
                    semantic.add(scope, namespace, vector, new.cache_key)
            except RedisError:
                log.warning("the semantic cache could not be read; the job runs")
                continue
            if hit is not None and answer is not None:
                self.answer_from_cache(new, answer)
                new.cache_similarity = round(hit.similarity, 4)
            metrics.SEMANTIC_CACHE_LOOKUPS.labels(new.model, "hit" if answer else "miss").inc()

    def cache_key(self, prepared: Prepared) -> str | None:
        """The job's exact-cache key; None when it is not determined or its body said
        `cache: false`."""
        new = prepared.new
        if not prepared.cache or not cache.is_deterministic(new.params):
            return None
        scope = cache.scope(self.caller.key_id, self.settings.cache_shared_across_keys)
        return answer_key(new, self.catalog, scope)

    def announce_answered(self, admitted: admission.Admitted, new_jobs: list[jobs.NewJob]) -> None:
        """What follows the commit of jobs the cache answered: their text on their streams,
        then the done events (long-poll, SSE, OpenAI waits) and their webhooks."""
        texts = {
            str(i): new.answer.text
            for i, new in zip(admitted.ids, new_jobs, strict=True)
            if new.answer and new.answer.text
        }
        state = self.request.app.state
        try:
            events.append_text(state.sync_redis, self.settings.redis_prefix, texts)
        except RedisError:
            log.warning("could not put cached answers on their streams", exc_info=True)
        deps.announcer(self.request).announce(
            Committed(ended=[str(i) for i in admitted.answered], deliveries=admitted.deliveries)
        )


async def submission(
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(None, alias=idempotency.HEADER),
    cache_control: str | None = Header(
        None, description="`no-store`: the exact cache neither answers nor keeps these jobs"
    ),
    caller: Caller = Depends(deps.caller),
    catalog: Catalog = Depends(deps.catalog),
    settings: Settings = Depends(deps.settings),
) -> Submission:
    """The `Submission` of a request (`async`: it does no I/O, so it needs no thread)."""
    return Submission(request, response, idempotency_key, cache_control, caller, catalog, settings)
