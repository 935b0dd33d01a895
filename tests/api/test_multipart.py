"""The upload form reader: the same fields and stored file however the body is cut, a 400
naming the field for a malformed form, and nothing left in the store after any refusal."""

from __future__ import annotations

import anyio
import httpx
import pytest
from starlette.requests import Request

from api.multipart import (
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MAX_PART_HEADER_LINE_BYTES,
    MAX_PART_HEADERS,
    PART_END,
    Form,
    FormEvents,
    MalformedForm,
    Part,
    boundary_of,
    read_form,
)
from llmq.errors import BadRequest, FileNotFound, TooLarge
from llmq.files import file_store, records
from llmq.files.store import FileStore
from llmq.settings import Settings

FORM = "multipart/form-data; boundary=B"
DISPOSITION = b'--B\r\nContent-Disposition: form-data; name="%s"%s\r\n\r\n'


def part(name: bytes, value: bytes, filename: bytes | None = None) -> bytes:
    return DISPOSITION % (name, b'; filename="%s"' % filename if filename else b"") + value


def form(*parts: bytes) -> bytes:
    return b"\r\n".join(parts) + b"\r\n--B--\r\n"


def encoded(files: dict, data: dict) -> tuple[bytes, str]:
    """A form as a real client (httpx, which the openai package uses) encodes it."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


@pytest.fixture
def store(environment) -> FileStore:
    return file_store(Settings(files_url="postgres"))


class Upload:
    """A request whose body arrives in pieces of `piece_bytes`; `received` counts them."""

    def __init__(self, body: bytes, content_type: str | None, piece_bytes: int = 65_536):
        self.pieces = [body[i : i + piece_bytes] for i in range(0, len(body), piece_bytes)]
        self.content_type = content_type
        self.received = 0
        self.disconnect_after: int | None = None

    def request(self) -> Request:
        async def receive() -> dict:
            if self.received == self.disconnect_after:
                return {"type": "http.disconnect"}
            self.received += 1
            more = self.received < len(self.pieces)
            body = self.pieces[self.received - 1] if self.pieces else b""
            return {"type": "http.request", "body": body, "more_body": more}

        headers = (
            [] if self.content_type is None else [(b"content-type", self.content_type.encode())]
        )
        return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def check_purpose(name: str, value: str) -> None:
    if name == "purpose" and value != "batch":
        raise BadRequest("purpose", "purpose must be batch")


def read(upload: Upload, store: FileStore, file_id: str, max_file_bytes: int = 10**6) -> Form:
    async def run() -> Form:
        return await read_form(
            upload.request(),
            store,
            file_id,
            max_file_bytes=max_file_bytes,
            check_field=check_purpose,
        )

    return anyio.run(run)


def stored(store: FileStore, file_id: str) -> bytes | None:
    try:
        return b"".join(store.open(file_id))
    except FileNotFound:
        return None


# A file whose bytes look like the form's own framing.
TRICKY = b"line\r\n--not-the-boundary\r\n\r\n--B\r--\r\n--B-\r\n" * 100 + b"\r\n-"


def test_the_boundary_comes_from_the_content_type():
    assert boundary_of('Multipart/Form-Data; charset=utf-8; boundary="a b;c"') == b"a b;c"
    with pytest.raises(MalformedForm):
        boundary_of("multipart/form-data; boundary=")


@pytest.mark.parametrize("piece_bytes", [1, 7, 100, 65_536, 10**7])
def test_every_cut_of_the_body_gives_the_same_form_and_file(store, piece_bytes):
    body, content_type = encoded(
        {"file": ("€ in put.jsonl", TRICKY, "application/jsonl")}, {"purpose": "batch"}
    )
    file_id = records.new_file_id()
    got = read(Upload(body, content_type, piece_bytes), store, file_id)
    assert got == Form({"purpose": "batch"}, "€ in put.jsonl", len(TRICKY))
    assert stored(store, file_id) == TRICKY
    store.delete(file_id)


def test_every_split_point_gives_the_same_parts():
    """Two feeds, cut at every byte: headers and delimiters that straddle feeds."""
    body = form(
        part(b"purpose", b"batch"),
        part(b"file", b"a\r\n--B-", b"f.jsonl"),
        b'--B\r\nContent-Type: text/plain\r\ncontent-disposition: form-data; name="x"\r\n\r\n',
    )
    whole = [
        Part("purpose", None), b"batch", PART_END,
        Part("file", "f.jsonl"), b"a\r\n--B-", PART_END,
        Part("x", None), PART_END,
    ]  # fmt: skip
    for cut in range(len(body) + 1):
        parser, events = FormEvents(b"B"), []
        for piece in (body[:cut], body[cut:]):
            for event in parser.feed(piece):
                if isinstance(event, bytes) and events and isinstance(events[-1], bytes):
                    events[-1] += event
                else:
                    events.append(event)
        parser.close()
        assert events == whole, cut


def test_an_empty_file_without_a_name_is_named_after_its_field(store):
    file_id = records.new_file_id()
    body = form(part(b"file", b""), part(b"purpose", b"batch"))
    assert read(Upload(body, FORM, 3), store, file_id) == Form({"purpose": "batch"}, "file", 0)
    assert stored(store, file_id) == b""
    store.delete(file_id)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/mixed; boundary=B",
        "multipart/form-data; boundary=" + "B" * 300,
    ],
)
def test_a_body_that_is_not_a_form_is_refused(content_type, store):
    with pytest.raises(BadRequest) as refused:
        read(Upload(form(part(b"file", b"x", b"f")), content_type), store, records.new_file_id())
    assert refused.value.field == "file"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"--B\r\nContent-Disposition: form-data; name=x\r\n\r\nunfinished",
        part(b"file", b"stored, then no closing boundary", b"f") + b"\r\n--B\r\n",
        b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--",
        b"--B\r\nContent-Disposition: attachment; name=x\r\n\r\nx\r\n--B--",
        b"--B\r\nContent-Disposition: form-data; name=\xff\r\n\r\nx\r\n--B--",
        b"preamble\r\n" + form(part(b"file", b"x", b"f")),
        b"--B" + b"junk" * 100,
        b"--B\r\nX-Long: " + b"x" * MAX_PART_HEADER_LINE_BYTES + b"\r\n\r\n--B--",
        b"--B\r\n" + b"X-Many: x\r\n" * MAX_PART_HEADERS + b"Content-Disposition: form-data\r\n",
    ],
)
def test_a_malformed_form_is_a_400_and_stores_nothing(store, body):
    file_id = records.new_file_id()
    for piece_bytes in (1, 65_536):
        with pytest.raises(BadRequest) as refused:
            read(Upload(body, FORM, piece_bytes), store, file_id)
        assert refused.value.field == "file" and "malformed form" in str(refused.value)
        assert stored(store, file_id) is None


def test_a_file_over_the_limit_is_too_large_and_stores_nothing(store):
    file_id = records.new_file_id()
    at = form(part(b"file", b"x" * 1_000, b"f"), part(b"purpose", b"batch"))
    assert read(Upload(at, FORM, 100), store, file_id, max_file_bytes=1_000).size_bytes == 1_000
    store.delete(file_id)
    over = form(part(b"file", b"x" * 1_001, b"f"), part(b"purpose", b"batch"))
    with pytest.raises(TooLarge):
        read(Upload(over, FORM, 100), store, file_id, max_file_bytes=1_000)
    assert stored(store, file_id) is None


# Distinct fields, each small, which a form of the body limit's size could hold by the
# hundred thousand: the reader keeps only a few.
MANY_FIELDS = [part(b"f%d" % i, b"x" * MAX_FIELD_BYTES) for i in range(MAX_FIELDS + 1)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (form(part(b"purpose", b"x" * (MAX_FIELD_BYTES + 1))), "purpose"),
        (form(part(b"file", b"a", b"f"), part(b"file", b"b", b"g")), "file"),
        (form(part(b"file", b"a", b"f"), part(b"purpose", b"vision")), "purpose"),
        (form(part(b"purpose", b"\xff")), "file"),
        (form(part(b"file", b"a", b"f"), *MANY_FIELDS), f"f{MAX_FIELDS}"),
    ],
)
def test_a_bad_field_is_a_400_naming_it_and_stores_nothing(store, body, field):
    file_id = records.new_file_id()
    with pytest.raises(BadRequest) as refused:
        read(Upload(body, FORM, 5), store, file_id)
    assert refused.value.field == field
    assert stored(store, file_id) is None


def test_a_bad_purpose_before_the_file_stops_the_upload_before_it_is_read(store):
    file_id = records.new_file_id()
    upload = Upload(form(part(b"purpose", b"vision"), part(b"file", TRICKY, b"f")), FORM, 100)
    with pytest.raises(BadRequest) as refused:
        read(upload, store, file_id)
    assert refused.value.field == "purpose"
    assert upload.received < len(upload.pieces) / 10
    assert stored(store, file_id) is None


@pytest.mark.parametrize("disconnect_after", [0, 1, 10])
def test_a_client_that_leaves_midway_is_a_400_and_stores_nothing(store, disconnect_after):
    file_id = records.new_file_id()
    upload = Upload(form(part(b"purpose", b"batch"), part(b"file", TRICKY, b"f")), FORM, 100)
    upload.disconnect_after = disconnect_after
    with pytest.raises(BadRequest) as refused:
        read(upload, store, file_id)
    assert refused.value.field == "file" and "ended before" in str(refused.value)
    assert stored(store, file_id) is None


def test_bytes_are_handed_on_before_the_part_ends():
    """A file part's bytes come out as they are fed, held back only by a delimiter's length."""
    parser = FormEvents(b"B")
    parser.feed(b"--B\r\nContent-Disposition: form-data; name=file; filename=f\r\n\r\n")
    out = parser.feed(b"x" * 100_000)
    assert sum(len(e) for e in out if isinstance(e, bytes)) >= 100_000 - len(b"\r\n--B")
