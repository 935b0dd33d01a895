"""The file stores keep one contract, Postgres and S3 alike; the metadata rows follow them.

The contract: bytes come back as they went in, in pieces; a write is atomic (a writer that
fails or is killed midway leaves nothing visible) and idempotent (the same id written again
replaces its content whole).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from llmq.db import session_scope
from llmq.errors import FileNotFound, InvalidField, LineTooLong
from llmq.files import file_store, records
from llmq.files.store import CHUNK_BYTES, FileStore, iter_lines, rechunk
from llmq.keys import create_key
from llmq.settings import Settings
from tests.conftest import RUN_ID
from tests.s3_helpers import s3_bucket

MIB = 1_048_576


@pytest.fixture(scope="module")
def s3_env(environment) -> Iterator[dict[str, str]]:
    with s3_bucket(f"llmq-test-{RUN_ID}") as env:
        yield env


@pytest.fixture(params=["postgres", "s3"])
def backend(request) -> tuple[FileStore, dict[str, str]]:
    """A store, and the environment that makes a child process build the same one."""
    env = {"LLMQ_FILES_URL": "postgres"}
    if request.param == "s3":
        env = request.getfixturevalue("s3_env")
    settings = Settings(
        files_url=env["LLMQ_FILES_URL"], files_s3_endpoint_url=env.get("LLMQ_FILES_S3_ENDPOINT_URL")
    )
    return file_store(settings), env


@pytest.fixture
def store(backend) -> FileStore:
    return backend[0]


def new_id() -> str:
    return records.new_file_id()


def pattern(size: int) -> bytes:
    """Bytes that differ from chunk to chunk, so a chunk out of order shows."""
    block = bytes(range(256)) * 4096 + b"\n"
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES, 8 * MIB, 20 * MIB + 123])
def test_bytes_come_back_as_they_went_in(store, size):
    data, file_id = pattern(size), new_id()
    # Pieces of odd sizes: the store cuts its own.
    pieces = (data[i : i + 300_001] for i in range(0, len(data), 300_001))
    assert store.put(file_id, pieces) == size
    chunks = list(store.open(file_id))
    assert b"".join(chunks) == data
    assert all(len(c) <= 8 * MIB for c in chunks)


def test_an_unknown_id_is_not_found(store):
    with pytest.raises(FileNotFound):
        store.open(new_id())
    store.delete(new_id())  # deleting nothing is fine


def test_writing_an_id_again_replaces_its_content_whole(store):
    file_id = new_id()
    store.put(file_id, [pattern(3 * MIB)])
    store.put(file_id, [b"short\n"])
    assert b"".join(store.open(file_id)) == b"short\n"
    store.delete(file_id)
    with pytest.raises(FileNotFound):
        store.open(file_id)


def failing_writer(size: int) -> Iterator[bytes]:
    yield pattern(size)
    raise ConnectionError("the writer died")


def test_a_writer_that_fails_midway_leaves_nothing_and_can_write_again(store):
    file_id = new_id()
    with pytest.raises(ConnectionError):
        store.put(file_id, failing_writer(17 * MIB))
    with pytest.raises(FileNotFound):
        store.open(file_id)
    assert store.put(file_id, [b"whole\n"]) == 6
    # A rewrite that fails keeps the content it would have replaced.
    with pytest.raises(ConnectionError):
        store.put(file_id, failing_writer(17 * MIB))
    assert b"".join(store.open(file_id)) == b"whole\n"


KILLED_WRITER = """
import sys
from llmq.files import file_store
from llmq.settings import Settings

def chunks():
    for _ in range(20):
        yield b"x" * 1_048_576
    print("midway", flush=True)
    sys.stdin.read()  # holds the write open until the process is killed

file_store(Settings()).put(sys.argv[1], chunks())
"""


def test_a_writer_killed_midway_leaves_nothing_and_a_second_write_succeeds(backend):
    store, env = backend
    file_id = new_id()
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, file_id],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == b"midway\n"  # 20 MiB handed to the store
    finally:
        child.kill()
        child.wait()
    with pytest.raises(FileNotFound):
        store.open(file_id)
    data = pattern(9 * MIB)
    assert store.put(file_id, [data]) == len(data)
    assert b"".join(store.open(file_id)) == data


def test_concurrent_writers_of_one_id_leave_one_whole_content(store):
    file_id, contents = new_id(), [pattern(9 * MIB), b"b" * (3 * MIB)]
    threads = [threading.Thread(target=store.put, args=(file_id, [c])) for c in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert b"".join(store.open(file_id)) in contents


def test_lines_come_in_order_across_chunks(store):
    file_id = new_id()
    lines = [b'{"custom_id": "%d"}' % i + b"y" * (i % 50 * 97) for i in range(3000)]
    store.put(file_id, [b"\n".join(lines)])
    assert list(store.lines(file_id)) == lines


def test_an_s3_writer_that_fails_aborts_its_multipart_upload(s3_env):
    store = file_store(
        Settings(
            files_url=s3_env["LLMQ_FILES_URL"],
            files_s3_endpoint_url=s3_env["LLMQ_FILES_S3_ENDPOINT_URL"],
        )
    )
    file_id = new_id()
    with pytest.raises(ConnectionError):
        store.put(file_id, failing_writer(17 * MIB))
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert uploads  # the killed writer's, left for the bucket's lifecycle rule
    assert [u for u in uploads if u["Key"] == store.key(file_id)] == []


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb\n"], [b"a", b"b"]),
        ([b"a\r\nb"], [b"a", b"b"]),
        ([b"a", b"b\n", b"\nc"], [b"ab", b"", b"c"]),
        ([b"", b"\n"], [b""]),
        ([], []),
    ],
)
def test_iter_lines(chunks, lines):
    assert list(iter_lines(chunks)) == lines


def test_a_line_past_the_limit_is_refused_without_being_held():
    pieces = (b"x" * 1000 for _ in range(10**6))  # 1 GB with no newline
    with pytest.raises(LineTooLong) as refused:
        list(iter_lines(itertools.chain([b"ok\n"], pieces), 4096))
    assert refused.value.line == 2


@pytest.mark.parametrize("size", [1, 4, 5])
def test_rechunk_cuts_exact_pieces(size):
    pieces = list(rechunk([b"abc", b"", b"defghij", b"k"], size))
    assert b"".join(pieces) == b"abcdefghijk"
    assert all(len(p) == size for p in pieces[:-1]) and 0 < len(pieces[-1]) <= size


# --- the metadata rows ------------------------------------------------------------------


def new_key() -> uuid.UUID:
    with session_scope() as session:
        return create_key(session, "files")[0].id


def test_write_file_is_idempotent_and_scoped_to_its_key(store):
    owner, other = new_key(), new_key()
    first = records.write_file(store, owner, "out.jsonl", "batch_output", [b"one\n"])
    again = records.write_file(
        store, owner, "out.jsonl", "batch_output", [b"one\n"], file_id=first.id
    )
    assert (again.id, again.bytes, again.created_at) == (first.id, 4, first.created_at)
    with session_scope() as session:
        rows, more = records.list_files(session, owner)
        assert ([r.id for r in rows], more) == ([first.id], False)
        with pytest.raises(FileNotFound):
            records.get_file(session, first.id, other)
    with pytest.raises(FileNotFound):
        records.delete_file(store, first.id, other)
    records.delete_file(store, first.id, owner)
    with pytest.raises(FileNotFound):
        store.open(first.id)


def test_list_files_pages_by_creation_time(store):
    key = new_key()
    made = [records.write_file(store, key, f"{i}.jsonl", "batch", [b"x"]) for i in range(5)]
    records.write_file(store, key, "out.jsonl", "batch_output", [b"x"])
    newest_first = [f.id for f in reversed(made)]
    with session_scope() as session:
        page, more = records.list_files(session, key, purpose="batch", limit=2)
        assert ([f.id for f in page], more) == (newest_first[:2], True)
        page, more = records.list_files(session, key, purpose="batch", after=page[-1].id)
        assert ([f.id for f in page], more) == (newest_first[2:], False)
        page, _ = records.list_files(session, key, purpose="batch", order="asc", limit=10)
        assert [f.id for f in page] == newest_first[::-1]
        with pytest.raises(InvalidField):
            records.list_files(session, new_key(), after=made[0].id)
