"""Domain errors. They carry no HTTP details; `api/errors.py` maps them to problem+json."""

from __future__ import annotations


class LlmqError(Exception):
    """Base of every error llmq raises on purpose."""


class CatalogError(LlmqError):
    """The catalog is malformed, or names something that is not there."""


class JobNotFound(LlmqError):
    pass


class FileNotFound(LlmqError):
    """No such file for this key (or in the store)."""


class BatchNotFound(LlmqError):
    """No such batch for this key."""


class TooLarge(LlmqError):
    """A body (an uploaded file) past its size limit, found while it was being read."""

    def __init__(self, limit_bytes: int):
        super().__init__(f"body exceeds {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class LineTooLong(LlmqError):
    """A line of a file is longer than its reader allows (it is not held whole to find out)."""

    def __init__(self, line: int, limit_bytes: int):
        super().__init__(f"line {line} is longer than {limit_bytes} bytes")
        self.line = line
        self.limit_bytes = limit_bytes


class InvalidField(LlmqError):
    """A request field is wrong in a way only the domain can tell (an unknown model, say)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class InvalidFields(LlmqError):
    """Several fields are wrong at once (a bulk request); each error names its field."""

    def __init__(self, errors: list[dict[str, str]]):
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


class JobStateConflict(LlmqError):
    """The job is in a state that does not allow the operation (cancel of a finished job)."""


class QueueUnavailable(LlmqError):
    """The broker could not take the job's message."""


class Unauthorized(LlmqError):
    pass


class KeyNotFound(LlmqError):
    pass


class Forbidden(LlmqError):
    """The key is valid but may not do this (an admin route called with a normal key)."""


class RateLimited(LlmqError):
    """Over a rate or concurrency limit; carries what the 429's headers need."""

    def __init__(self, message: str, retry_after_s: int, headers: dict[str, str], policy: str):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers
        self.policy = policy


class BudgetExceeded(LlmqError):
    """The job's worst-case cost does not fit in what is left of the key's budget."""

    def __init__(self, message: str, budget: dict[str, str]):
        super().__init__(message)
        self.budget = budget


class IdempotencyMismatch(LlmqError):
    """An `Idempotency-Key` reused with another request body."""


class BadRequest(LlmqError):
    """A malformed header (an `Idempotency-Key` that is empty or too long) or form field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class UnknownModel(InvalidField):
    """A request names a model the catalog does not have."""


class UnsupportedParameter(InvalidField):
    """A request parameter llmq cannot honour (tools, logprobs...): refused, never ignored."""


class JobNotDone(LlmqError):
    """A request that waits for its jobs got no result, though its jobs exist: the message
    names them, so the client reads them instead of submitting again."""

    def __init__(self, message: str, job_ids: list[str], code: str):
        super().__init__(message)
        self.job_ids = job_ids
        self.code = code


class WaitLimitReached(JobNotDone):
    """The jobs did not end within the server's wait limit; they keep running."""


class WaitInterrupted(JobNotDone):
    """Redis or Postgres stopped answering while the request waited; the jobs go on."""


class JobStopped(JobNotDone):
    """A job ended cancelled or expired, without its result."""


class JobFailed(JobNotDone):
    """A job ended failed (its `error` says why)."""
