"""multipart/form-data, parsed as it arrives, with its one file streamed to the file store.

Starlette's `request.form()` spools each uploaded file to a temporary file before the route
runs. Here the parser is pushed the body's bytes as they come and hands the file's bytes on at
once: the store writes them in 1 MiB pieces from a worker thread, which pulls each next piece
from the event loop, so the upload flows at the pace the store takes it and no more than a
few pieces are held at a time.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import anyio.from_thread
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request

from llmq.errors import BadRequest, TooLarge
from llmq.files.store import FileStore

MAX_PART_HEADER_BYTES = 16_384
MAX_FIELD_BYTES = 1_024  # a plain field (`purpose`)
FORM_OVERHEAD_BYTES = 65_536  # what a form may add around its file: boundaries, headers, fields
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.I)
_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MalformedForm(ValueError):
    pass


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None


class PartEnd:
    """Marks the end of the current part's bytes."""


PART_END = PartEnd()
Event = Part | bytes | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    kind = (content_type or "").split(";")[0].strip().lower()
    found = _BOUNDARY.search(content_type or "")
    if kind != "multipart/form-data" or not found:
        raise MalformedForm("the body must be multipart/form-data with a boundary")
    return (found.group(1) or found.group(2)).encode("latin-1")


def _disposition(value: str) -> Part:
    kind, *_ = value.split(";")
    params = {}
    for name, raw in _PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    if kind.strip().lower() != "form-data" or "name" not in params:
        raise MalformedForm("each part needs `Content-Disposition: form-data; name=...`")
    filename = params.get("filename")
    extended = params.get("filename*", "")
    if "''" in extended:  # RFC 5987: charset''percent-encoded
        filename = unquote(extended.split("''", 1)[1])
    return Part(params["name"], filename)


class MultipartParser:
    """A push parser: `feed` it bytes, get back the events they complete, in order."""

    def __init__(self, boundary: bytes):
        self.delimiter = b"\r\n--" + boundary
        self.buffer = bytearray(b"\r\n")  # the first delimiter then looks like every other
        self.state = "preamble"

    def feed(self, data: bytes) -> list[Event]:
        self.buffer += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self.state != "done":
            raise MalformedForm("the form ended before its closing boundary")

    def _step(self, events: list[Event]) -> bool:
        """Advance by one state when the buffer holds enough; False to wait for more."""
        buf, delim = self.buffer, self.delimiter
        if self.state in ("preamble", "body"):
            index = buf.find(delim)
            if index < 0:
                keep = len(delim) - 1  # a delimiter may straddle two feeds
                if self.state == "body" and len(buf) > keep:
                    events.append(bytes(buf[: len(buf) - keep]))
                del buf[: max(0, len(buf) - keep)]
                return False
            if self.state == "body":
                if index:
                    events.append(bytes(buf[:index]))
                events.append(PART_END)
            del buf[: index + len(delim)]
            self.state = "after-delimiter"
            return True
        if self.state == "after-delimiter":
            if buf.startswith(b"--"):
                self.state = "done"
                buf.clear()
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 64:
                    raise MalformedForm("garbage after a boundary")
                return False
            if buf[:end].strip(b" \t"):
                raise MalformedForm("garbage after a boundary")
            del buf[: end + 2]
            self.state = "headers"
            return True
        if self.state == "headers":
            end = 0 if buf.startswith(b"\r\n") else buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_PART_HEADER_BYTES:
                    raise MalformedForm("part headers too long")
                return False
            headers = {}
            for line in bytes(buf[:end]).decode("utf-8", "replace").split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            events.append(_disposition(headers.get("content-disposition", "")))
            del buf[: end + (2 if end == 0 else 4)]
            self.state = "body"
            return True
        buf.clear()  # done: the epilogue is ignored
        return False


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # set when the file part came
    size_bytes: int = 0


async def _events(request: Request, parser: MultipartParser) -> AsyncIterator[Event]:
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
        parser = MultipartParser(boundary_of(request.headers.get("content-type")))
        events = _events(request, parser)
        try:
            await _read(events, form, store, file_id, max_file_bytes, check_field, file_field)
        finally:
            await events.aclose()
    except Exception as exc:
        if form.filename is not None:
            await anyio.to_thread.run_sync(store.delete, file_id)
        if isinstance(exc, MalformedForm | UnicodeDecodeError):
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
        value = bytearray()
        async for piece in events:
            if piece is PART_END:
                break
            value += piece  # type: ignore[operator]
            if len(value) > MAX_FIELD_BYTES:
                raise BadRequest(event.name, f"longer than {MAX_FIELD_BYTES} bytes")
        form.fields[event.name] = bytes(value).decode("utf-8")
        check_field(event.name, form.fields[event.name])
