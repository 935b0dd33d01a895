"""Reading a batch's input file: one request per JSONL line, checked before any job exists.

Pure, with no database: the lines come from the file store as bytes. Two kinds of fault:
a file that is not a batch (not JSONL, a duplicate `custom_id`, a wrong `method` or `url`,
too many lines) fails the whole batch with line-numbered errors; a well-formed line whose
body is refused (an unknown model, a parameter llmq cannot honour) goes to the error file,
and the other lines run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from llmq.catalog import Catalog
from llmq.errors import InvalidField, LineTooLong, UnknownModel
from llmq.jobs import NewJob
from llmq.openai_requests import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_request_to_jobs,
    completion_request_to_jobs,
)

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
ENDPOINTS: dict[str, tuple[type[BaseModel], Callable[..., list[NewJob]]]] = {
    CHAT: (ChatCompletionRequest, chat_request_to_jobs),
    TEXT: (CompletionRequest, completion_request_to_jobs),
}
MAX_ERRORS = 100  # line errors reported for a broken file


def _clean(value: str | None) -> str | None:
    """Postgres JSON holds no NUL; a field name the client wrote may carry one."""
    return value.replace("\x00", "\ufffd") if value else value


@dataclass(frozen=True)
class LineError:
    """A fault of the file itself, in OpenAI's `errors.data` shape."""

    line: int
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": _clean(self.message), "param": _clean(self.param),
                "line": self.line}  # fmt: skip


@dataclass(frozen=True)
class Refused:
    """A line that does not run: it goes to the error file."""

    line: int
    custom_id: str
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line, "custom_id": self.custom_id, "code": self.code,
            "message": _clean(self.message), "param": _clean(self.param),
        }  # fmt: skip


@dataclass(frozen=True)
class Accepted:
    line: int
    custom_id: str
    job: NewJob


@dataclass
class Checked:
    accepted: list[Accepted] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    def fail(self, error: LineError) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)


def _param(exc: ValidationError) -> str | None:
    loc = exc.errors()[0].get("loc") or ()
    return ".".join(str(part) for part in loc) or None


def check_body(
    body: Any, endpoint: str, catalog: Catalog, max_prompt_chars: int, key_id: str = ""
) -> NewJob | tuple[str, str, str | None]:
    """The line's job, or why it is refused: (code, message, param). `key_id`: whose
    batch, for an alias sticky per key."""
    model, convert = ENDPOINTS[endpoint]
    try:
        request = model.model_validate(body)
        if getattr(request, "stream", False):
            raise InvalidField("stream", "a batch line cannot stream")
        jobs = convert(request, catalog, max_prompt_chars, key_id)
    except ValidationError as exc:
        return "invalid_request", str(exc.errors()[0].get("msg")), _param(exc)
    except UnknownModel as exc:
        return "model_not_found", exc.message, exc.field
    except InvalidField as exc:
        return "invalid_request", exc.message, exc.field
    if len(jobs) != 1:
        param = "n" if getattr(request, "n", 1) != 1 else "prompt"
        return "invalid_request", "a batch line makes one choice: n=1 and one prompt", param
    return jobs[0]


def _line(
    number: int, raw: bytes, endpoint: str, seen: set[str], checked: Checked, convert
) -> None:
    try:
        item = json.loads(raw)
    except (ValueError, RecursionError):
        checked.fail(LineError(number, "invalid_json_line", "the line is not valid JSON"))
        return
    if not isinstance(item, dict):
        checked.fail(LineError(number, "invalid_json_line", "the line is not a JSON object"))
        return
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or "\x00" in custom_id:
        checked.fail(LineError(number, "missing_custom_id", "give a string `custom_id`",
                               "custom_id"))  # fmt: skip
        return
    if custom_id in seen:
        checked.fail(LineError(number, "duplicate_custom_id",
                               f"custom_id {custom_id!r} is used twice", "custom_id"))  # fmt: skip
        return
    seen.add(custom_id)
    if item.get("method") != "POST":
        checked.fail(LineError(number, "invalid_method", "`method` must be POST", "method"))
        return
    if item.get("url") != endpoint:
        checked.fail(LineError(number, "mismatched_url",
                               f"`url` must be the batch's endpoint {endpoint}", "url"))  # fmt: skip
        return
    if not isinstance(item.get("body"), dict):
        checked.fail(LineError(number, "invalid_body", "`body` must be an object", "body"))
        return
    if checked.broken:
        return  # the batch fails: its lines need no further checks
    result = convert(item["body"])
    if isinstance(result, NewJob):
        checked.accepted.append(Accepted(number, custom_id, result))
    else:
        checked.refused.append(Refused(number, custom_id, *result))


def check_lines(
    lines: Iterable[bytes],
    endpoint: str,
    catalog: Catalog,
    max_prompt_chars: int,
    max_lines: int,
    key_id: str = "",
) -> Checked:
    """Every line of the input file, in order (blank lines skipped). `lines` may raise
    `LineTooLong`, which breaks the file at that line."""
    checked, seen = Checked(), set()
    count = 0

    def convert(body: Any) -> NewJob | tuple[str, str, str | None]:
        return check_body(body, endpoint, catalog, max_prompt_chars, key_id)

    try:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            count += 1
            if count > max_lines:
                checked.fail(LineError(number, "too_many_lines",
                                       f"a batch holds at most {max_lines} requests"))  # fmt: skip
                break
            _line(number, raw, endpoint, seen, checked, convert)
    except LineTooLong as exc:
        checked.fail(LineError(exc.line, "line_too_long", str(exc)))
    if count == 0 and not checked.errors:
        checked.fail(LineError(1, "empty_file", "the input file holds no requests"))
    return checked
