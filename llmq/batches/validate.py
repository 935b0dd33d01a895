"""Reading a batch's input file: one request per JSONL line, checked before any job exists.

Pure, with no database: the lines come from the file store as bytes. Two kinds of fault:
a file that is not a batch (not JSONL, a duplicate `custom_id`, a wrong `method` or `url`,
too many lines) fails the whole batch with line-numbered errors; a well-formed line whose
body is refused (an unknown model, a parameter llmq cannot honour) goes to the error file,
and the other lines run.
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections.abc import Callable, Iterable, Iterator
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


class FileCheck:
    """One pass over an input file, line by line, in flat memory: it keeps the refused lines
    (for the error file), at most `MAX_ERRORS` errors, and 8 bytes per line to find a repeated
    `custom_id` (a hash; `find_repeats` confirms a repeat on a second read, once, at the end).

    `accepted(lines)` yields each line that becomes a job as it is read, so a caller writes
    jobs while the file streams; a file found broken later (a repeat is only known at the
    end) is the caller's to roll back."""

    def __init__(
        self,
        endpoint: str,
        catalog: Catalog,
        max_prompt_chars: int,
        max_lines: int,
        key_id: str = "",
    ) -> None:
        self.endpoint, self.max_lines = endpoint, max_lines
        self.errors: list[LineError] = []
        self.refused: list[Refused] = []
        self.lines = 0  # requests read (blank lines skipped)
        self._id_hashes = array("q")

        def convert(body: Any) -> NewJob | tuple[str, str, str | None]:
            return check_body(body, endpoint, catalog, max_prompt_chars, key_id)

        self._convert = convert

    @staticmethod
    def id_hash(custom_id: str) -> int:
        """The 8 bytes kept of each line's `custom_id`; equal ids hash equal in one process."""
        return hash(custom_id)

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    def fail(self, error: LineError) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)

    def accepted(self, lines: Iterable[bytes]) -> Iterator[Accepted]:
        """The lines that become jobs, in order, as `lines` is read; `lines` may raise
        `LineTooLong`, which breaks the file at that line. Nothing more is yielded once the
        file is broken."""
        try:
            for number, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                self.lines += 1
                if self.lines > self.max_lines:
                    self.fail(LineError(number, "too_many_lines",
                                        f"a batch holds at most {self.max_lines} requests"))  # fmt: skip
                    break
                line = self._line(number, raw)
                if line is not None:
                    yield line
        except LineTooLong as exc:
            self.fail(LineError(exc.line, "line_too_long", str(exc)))
        if self.lines == 0 and not self.errors:
            self.fail(LineError(1, "empty_file", "the input file holds no requests"))

    def find_repeats(self, lines: Iterable[bytes]) -> None:
        """After `accepted` has run through the file: fail each line whose `custom_id` an
        earlier line used. Reads `lines` (the file again) only when two ids share a hash."""
        ordered = sorted(self._id_hashes)  # 40 MB for a million lines, only for this moment
        shared = {a for a, b in itertools.pairwise(ordered) if a == b}
        del ordered
        if not shared:
            return
        first: dict[str, int] = {}
        for number, raw in enumerate(lines, 1):
            custom_id = _custom_id(raw)
            if custom_id is None or self.id_hash(custom_id) not in shared:
                continue
            if custom_id in first:
                self.fail(LineError(number, "duplicate_custom_id",
                                    f"custom_id {custom_id!r} is used twice", "custom_id"))  # fmt: skip
            else:
                first[custom_id] = number
        self.errors.sort(key=lambda e: e.line)

    def _line(self, number: int, raw: bytes) -> Accepted | None:
        try:
            item = json.loads(raw)
        except (ValueError, RecursionError):
            self.fail(LineError(number, "invalid_json_line", "the line is not valid JSON"))
            return None
        if not isinstance(item, dict):
            self.fail(LineError(number, "invalid_json_line", "the line is not a JSON object"))
            return None
        custom_id = item.get("custom_id")
        if not _is_id(custom_id):
            self.fail(LineError(number, "missing_custom_id", "give a string `custom_id`",
                                "custom_id"))  # fmt: skip
            return None
        self._id_hashes.append(self.id_hash(custom_id))
        if item.get("method") != "POST":
            self.fail(LineError(number, "invalid_method", "`method` must be POST", "method"))
            return None
        if item.get("url") != self.endpoint:
            self.fail(LineError(number, "mismatched_url",
                                f"`url` must be the batch's endpoint {self.endpoint}", "url"))  # fmt: skip
            return None
        if not isinstance(item.get("body"), dict):
            self.fail(LineError(number, "invalid_body", "`body` must be an object", "body"))
            return None
        if self.broken:
            return None  # the batch fails: its lines need no further checks
        result = self._convert(item["body"])
        if isinstance(result, NewJob):
            return Accepted(number, custom_id, result)
        self.refused.append(Refused(number, custom_id, *result))
        return None


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value


def _custom_id(raw: bytes) -> str | None:
    """The line's `custom_id` when it has a valid one (the second read of `find_repeats`)."""
    try:
        item = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    value = item.get("custom_id") if isinstance(item, dict) else None
    return value if _is_id(value) else None


@dataclass
class Checked:
    """A whole small file's check at once (`check_lines`)."""

    accepted: list[Accepted] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return bool(self.errors)


def check_lines(
    lines: Iterable[bytes],
    endpoint: str,
    catalog: Catalog,
    max_prompt_chars: int,
    max_lines: int,
    key_id: str = "",
) -> Checked:
    """Every line of a file held in memory, in order (blank lines skipped): `FileCheck` with
    its results kept."""
    check = FileCheck(endpoint, catalog, max_prompt_chars, max_lines, key_id)
    read: list[bytes] = []

    def keep() -> Iterator[bytes]:
        for raw in lines:
            read.append(raw)
            yield raw

    accepted = list(check.accepted(keep()))
    check.find_repeats(read)
    return Checked(accepted, check.refused, check.errors)
