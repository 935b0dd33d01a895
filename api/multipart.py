"""multipart/form-data, parsed as it arrives, with its one file streamed to the file store.

Starlette's `request.form()` spools each uploaded file to a temporary file before the route
runs. Here `python-multipart`'s push parser is fed the body's bytes as they come, and the file's
bytes are handed on at once: the store writes them in 1 MiB pieces from a worker thread, which
pulls each next piece from the event loop, so the upload flows at the pace the store takes it
and no more than a few pieces are held at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import anyio.from_thread
import anyio.to_thread
import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from llmq.errors import BadRequest, TooLarge
from llmq.files.store import FileStore

MAX_PART_HEADERS = 8
MAX_PART_HEADER_LINE_BYTES = 4_096
MAX_FIELD_BYTES = 1_024  # a plain field (`purpose`)
MAX_FIELDS = 16  # plain fields a form may have, so fields cannot fill the body limit
FORM_OVERHEAD_BYTES = 65_536  # what a form may add around its file: boundaries, headers, fields


class MalformedForm(FormParserError):
    """A form the library parsed but that is not one this route takes."""


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None


class PartEnd:
    """Marks the end of the current part's bytes."""


PART_END = PartEnd()
Event = Part | bytes | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise MalformedForm("the body must be multipart/form-data with a boundary")
    return params[b"boundary"]


def _part(disposition: bytes | None) -> Part:
    """The part's name and file name from its Content-Disposition (UTF-8, as browsers and
    httpx send them; RFC 7578 has no `filename*`)."""
    kind, params = parse_options_header(disposition)
    if kind != b"form-data" or b"name" not in params:
        raise MalformedForm("each part needs `Content-Disposition: form-data; name=...`")
    filename = params.get(b"filename")
    return Part(params[b"name"].decode(), None if filename is None else filename.decode())


class FormEvents:
    """The library's callbacks as events: `feed` it bytes, get back what they complete.
    Raises `FormParserError` (or `MalformedForm`, one) on a malformed form."""

    def __init__(self, boundary: bytes):
        self.events: list[Event] = []
        self.header, self.value = bytearray(), bytearray()
        self.disposition: bytes | None = None
        self.ended = False
        callbacks = {
            "on_header_field": lambda data, start, end: self.header.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self.events.append(data[start:end]),
            "on_part_end": lambda: self.events.append(PART_END),
            "on_end": lambda: setattr(self, "ended", True),
        }
        self.parser = python_multipart.MultipartParser(
            boundary,
            callbacks,  # type: ignore[arg-type]
            max_header_count=MAX_PART_HEADERS,
            max_header_size=MAX_PART_HEADER_LINE_BYTES,
        )

    def _header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            self.disposition = bytes(self.value)
        self.header.clear()
        self.value.clear()

    def _headers_finished(self) -> None:
        self.events.append(_part(self.disposition))
        self.disposition = None

    def feed(self, data: bytes) -> list[Event]:
        self.parser.write(data)
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        if not self.ended:
            raise MalformedForm("the form ended before its closing boundary")


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # set when the file part came
    size_bytes: int = 0


async def _events(request: Request, parser: FormEvents) -> AsyncIterator[Event]:
    try:
        async for data in request.stream():
            for event in parser.feed(data):
                yield event
    except ClientDisconnect:
        raise BadRequest("file", "the upload ended before the form did") from None
    parser.close()


async def _store(events: AsyncIterator[Event], store: FileStore, file_id: str, limit: int) -> int:
    """Hand the current part's bytes to `store.put`, which runs in a worker thread."""

    async def part() -> AsyncIterator[bytes]:
        total = 0
        async for event in events:
            if event is PART_END:
                return
            assert isinstance(event, bytes)
            total += len(event)
            if total > limit:
                raise TooLarge(limit)
            yield event

    pieces = part()

    def pulled() -> Iterator[bytes]:
        while True:
            try:
                yield anyio.from_thread.run(pieces.__anext__)
            except StopAsyncIteration:
                return

    return await anyio.to_thread.run_sync(store.put, file_id, pulled())


async def read_form(
    request: Request,
    store: FileStore,
    file_id: str,
    *,
    max_file_bytes: int,
    check_field: Callable[[str, str], None],
    file_field: str = "file",
) -> Form:
    """Read the form, storing its `file_field` part as `file_id` on the way; the other parts
    are small fields, each passed to `check_field` as it ends (so a bad `purpose` sent before
    the file stops the upload before it is stored). On any error, nothing stays stored."""
    form = Form()
    try:
        parser = FormEvents(boundary_of(request.headers.get("content-type")))
        events = _events(request, parser)
        try:
            await _read(events, form, store, file_id, max_file_bytes, check_field, file_field)
        finally:
            await events.aclose()
    except Exception as exc:
        if form.filename is not None:
            await anyio.to_thread.run_sync(store.delete, file_id)
        if isinstance(exc, FormParserError | UnicodeDecodeError):
            raise BadRequest(file_field, f"malformed form: {exc}") from None
        raise
    return form


async def _read(
    events: AsyncIterator[Event],
    form: Form,
    store: FileStore,
    file_id: str,
    max_file_bytes: int,
    check_field: Callable[[str, str], None],
    file_field: str,
) -> None:
    async for event in events:
        if not isinstance(event, Part):
            raise MalformedForm("bytes outside a part")
        if event.name == file_field:
            if form.filename is not None:
                raise BadRequest(file_field, "one file per upload")
            form.filename = event.filename or file_field
            form.size_bytes = await _store(events, store, file_id, max_file_bytes)
            continue
        if event.name not in form.fields and len(form.fields) == MAX_FIELDS:
            raise BadRequest(event.name, f"more than {MAX_FIELDS} fields")
        value = bytearray()
        async for piece in events:
            if piece is PART_END:
                break
            value += piece  # type: ignore[operator]
            if len(value) > MAX_FIELD_BYTES:
                raise BadRequest(event.name, f"longer than {MAX_FIELD_BYTES} bytes")
        form.fields[event.name] = bytes(value).decode("utf-8")
        check_field(event.name, form.fields[event.name])
