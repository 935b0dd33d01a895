"""A batch's input file: broken files fail with line-numbered errors, refused lines are kept
for the error file, the rest become jobs."""

from __future__ import annotations

import json

import pytest

from llmq.batches.validate import CHAT, TEXT, FileCheck, check_lines
from llmq.catalog import Catalog, ModelSpec
from llmq.errors import LineTooLong
from llmq.files.store import iter_lines
from llmq.routing import Alias

CATALOG = Catalog(
    {"m": ModelSpec(name="m", engine="echo", max_new_tokens=100, default_max_tokens=7)}
)


def line(custom_id="a", method="POST", url=CHAT, **body) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | body
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body}).encode()


def check(lines: list[bytes], endpoint: str = CHAT, max_lines: int = 10):
    return check_lines(lines, endpoint, CATALOG, 1000, max_lines)


def test_good_lines_become_jobs_in_order():
    checked = check([line("a"), b"", line("b", temperature=0)])
    assert not checked.broken and not checked.refused
    assert [(a.line, a.custom_id) for a in checked.accepted] == [(1, "a"), (3, "b")]
    assert checked.accepted[0].job.params.max_tokens == 7
    assert checked.accepted[1].job.messages == [{"role": "user", "content": "hi"}]


def test_text_completion_lines():
    raw = json.dumps({"custom_id": "t", "method": "POST", "url": TEXT,
                      "body": {"model": "m", "prompt": "hi"}}).encode()  # fmt: skip
    checked = check([raw], TEXT)
    assert checked.accepted[0].job.prompt == "hi"


@pytest.mark.parametrize(
    "bad, code, param",
    [
        (b"not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json_line", None),
        (b'{"custom_id": "\xff"}', "invalid_json_line", None),
        (json.dumps({"method": "POST"}).encode(), "missing_custom_id", "custom_id"),
        (line("a"), "duplicate_custom_id", "custom_id"),
        (line("z", method="GET"), "invalid_method", "method"),
        (line("z", url=TEXT), "mismatched_url", "url"),
        (json.dumps({"custom_id": "z", "method": "POST", "url": CHAT, "body": 3}).encode(),
         "invalid_body", "body"),
    ],
)  # fmt: skip
def test_a_broken_file_fails_with_the_line_number(bad, code, param):
    checked = check([line("a"), bad])
    assert checked.broken
    assert [e.as_dict() for e in checked.errors] == [
        {"code": code, "message": checked.errors[0].message, "param": param, "line": 2}
    ]


def test_too_many_lines_and_an_empty_file():
    checked = check([line(str(i)) for i in range(4)], max_lines=3)
    assert [(e.line, e.code) for e in checked.errors] == [(4, "too_many_lines")]
    assert [e.code for e in check([b"", b"  "]).errors] == ["empty_file"]


def test_a_line_too_long_breaks_the_file_at_its_number():
    data = [line("a") + b"\n" + b"x" * 300 + b"\n"]
    checked = check(iter_lines(data, max_line_bytes=200))
    assert [(e.line, e.code) for e in checked.errors] == [(2, "line_too_long")]
    with pytest.raises(LineTooLong):
        list(iter_lines(data, max_line_bytes=200))


@pytest.mark.parametrize(
    "body, code, param",
    [
        ({"model": "nope"}, "model_not_found", "model"),
        ({"tools": [{"type": "function"}]}, "invalid_request", "tools"),
        ({"temperature": "hot"}, "invalid_request", "temperature"),
        ({"stream": True}, "invalid_request", "stream"),
        ({"n": 2}, "invalid_request", "n"),
        ({"max_tokens": 1000}, "invalid_request", "max_tokens"),
    ],
)
def test_a_refused_body_goes_to_the_error_file_and_the_rest_run(body, code, param):
    checked = check([line("good"), line("bad", **body)])
    assert not checked.broken
    assert [a.custom_id for a in checked.accepted] == ["good"]
    [refused] = checked.refused
    assert (refused.line, refused.custom_id, refused.code, refused.param) == (2, "bad", code, param)


def test_a_field_name_with_nul_is_kept_without_it():
    [refused] = check([line("z", **{"x\x00": 1})]).refused
    assert "\x00" not in str(refused.as_dict()) and refused.as_dict()["param"] == "x\ufffd"


def test_a_line_may_name_an_alias_sticky_per_batch_key():
    alias = Alias(
        name="al",
        variants=[{"name": "only", "model": "m", "weight": 1}],
        rules=[{"when": {"keyword": "big"}, "model": "m", "name": "big"}],
    )
    catalog = Catalog(CATALOG.models, {"al": alias})
    lines = [
        line("a", model="al"),
        line("b", model="al", messages=[{"role": "user", "content": "BIG"}]),
    ]
    checked = check_lines(lines, CHAT, catalog, 1000, 10, key_id="k")
    assert not checked.refused
    assert [(a.job.model, a.job.alias, a.job.variant) for a in checked.accepted] == [
        ("m", "al", "only"),
        ("m", "al", "big"),
    ]


def test_lines_are_checked_and_yielded_while_the_file_is_read():
    """A caller writes each chunk of jobs before the rest of the file is read."""
    read = []

    def file():
        for i in range(5):
            read.append(i)
            yield line(f"r{i}")

    checker = FileCheck(CHAT, CATALOG, 1000, 10)
    lines = checker.accepted(file())
    assert next(lines).custom_id == "r0" and read == [0]
    assert [a.custom_id for a in lines] == ["r1", "r2", "r3", "r4"]
    assert checker.lines == 5 and not checker.broken


class Colliding(FileCheck):
    """Every `custom_id` of one length shares a hash, as distinct ids rarely do."""

    @staticmethod
    def id_hash(custom_id: str) -> int:
        return len(custom_id)


def test_a_shared_hash_is_a_repeat_only_when_the_ids_are_equal():
    raw = [line("ab"), line("cd"), line("ef"), line("cd"), line("xyz")]
    checker = Colliding(CHAT, CATALOG, 1000, 10)
    assert len(list(checker.accepted(raw))) == 5
    checker.find_repeats(raw)
    assert [(e.line, e.code) for e in checker.errors] == [(4, "duplicate_custom_id")]


def test_repeats_found_at_the_end_take_their_place_among_the_line_errors():
    raw = [line("a"), line("b"), line("a"), b"not json"]
    checker = FileCheck(CHAT, CATALOG, 1000, 10)
    list(checker.accepted(raw))
    checker.find_repeats(raw)
    assert [(e.line, e.code) for e in checker.errors] == [
        (3, "duplicate_custom_id"),
        (4, "invalid_json_line"),
    ]
