"""The streaming form parser: the same parts and bytes however the body is cut into feeds."""

from __future__ import annotations

import httpx
import pytest

from api.multipart import PART_END, MalformedForm, MultipartParser, Part, boundary_of


def encoded(files: dict, data: dict) -> tuple[bytes, str]:
    """A form as a real client (httpx, which the openai package uses) encodes it."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def parse(body: bytes, content_type: str, feed_bytes: int) -> list:
    """The events, with each part's bytes joined (feeds cut them anywhere)."""
    parser = MultipartParser(boundary_of(content_type))
    events: list = []
    for start in range(0, len(body), feed_bytes):
        for event in parser.feed(body[start : start + feed_bytes]):
            if isinstance(event, bytes) and events and isinstance(events[-1], bytes):
                events[-1] += event
            else:
                events.append(event)
    parser.close()
    return events


# A file whose bytes look like the form's own framing.
TRICKY = b"line\r\n--not-the-boundary\r\n\r\n--\r\n" * 1000 + b"\r\n-"


@pytest.mark.parametrize("feed_bytes", [1, 2, 7, 100, 65_536, 10**7])
def test_every_cut_of_the_body_gives_the_same_parts(feed_bytes):
    body, content_type = encoded(
        {"file": ("in put.jsonl", TRICKY, "application/jsonl")}, {"purpose": "batch"}
    )
    assert parse(body, content_type, feed_bytes) == [
        Part("purpose", None), b"batch", PART_END,
        Part("file", "in put.jsonl"), TRICKY, PART_END,
    ]  # fmt: skip


def test_an_empty_file_and_an_rfc_5987_name():
    body = (
        b'preamble\r\n--B\r\nContent-Disposition: form-data; name="file"; '
        b"filename*=UTF-8''%E2%82%AC%20rates.jsonl\r\n\r\n\r\n--B--\r\nepilogue"
    )
    assert parse(body, 'multipart/form-data; boundary="B"', 3) == [
        Part("file", "€ rates.jsonl"),
        PART_END,
    ]


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "multipart/form-data", "multipart/mixed; boundary=B"],
)
def test_a_body_that_is_not_a_form_is_refused(content_type):
    with pytest.raises(MalformedForm):
        boundary_of(content_type)


@pytest.mark.parametrize(
    "body",
    [
        b"--B\r\nContent-Disposition: form-data; name=x\r\n\r\nunfinished",
        b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--",
        b"--B\r\nContent-Disposition: attachment; name=x\r\n\r\nx\r\n--B--",
        b"--B" + b"junk" * 100,
        b"--B\r\n" + b"X-Long: " + b"x" * 20_000,
        b"",
    ],
)
def test_a_malformed_form_is_refused(body):
    parser = MultipartParser(b"B")
    with pytest.raises(MalformedForm):
        parser.feed(body)
        parser.close()


def test_bytes_are_handed_on_before_the_part_ends():
    """A file part's bytes come out as they are fed, held back only by a delimiter's length."""
    parser = MultipartParser(b"B")
    parser.feed(b"--B\r\nContent-Disposition: form-data; name=file; filename=f\r\n\r\n")
    out = parser.feed(b"x" * 100_000)
    assert sum(len(e) for e in out if isinstance(e, bytes)) >= 100_000 - len(b"\r\n--B")
