"""The file store: bytes by id, behind one interface with two backends (Postgres chunks,
S3-compatible objects).

Every method streams: a file goes in and comes out in pieces, so no process holds a whole
file, whatever its size. `put` is atomic and idempotent, the contract a writer that may die
and be retried (an upload, a batch finalizer) needs: until it returns, nothing of the new
content is visible, and writing an id again replaces its content whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

from llmq.errors import LineTooLong

CHUNK_BYTES = 1_048_576  # the piece a store keeps or reads at a time


class FileStore(ABC):
    @abstractmethod
    def put(self, file_id: str, chunks: Iterable[bytes]) -> int:
        """Store `chunks`, in order, as the content of `file_id`; returns its size in bytes.
        An exception from `chunks` (or a writer that dies) leaves the id as it was."""

    @abstractmethod
    def open(self, file_id: str) -> Iterator[bytes]:
        """The content in order, in pieces; raises `FileNotFound` at once when there is none."""

    @abstractmethod
    def delete(self, file_id: str) -> None:
        """Remove the content; deleting what is not there is no error."""

    def lines(self, file_id: str, max_line_bytes: int | None = None) -> Iterator[bytes]:
        """The content line by line (see `iter_lines`)."""
        return iter_lines(self.open(file_id), max_line_bytes)


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes in pieces of exactly `size`, the last one shorter; none empty."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) < size:
            continue
        start = 0
        with memoryview(buffer) as view:
            while len(buffer) - start >= size:
                yield bytes(view[start : start + size])
                start += size
        del buffer[:start]
    if buffer:
        yield bytes(buffer)


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int | None = None) -> Iterator[bytes]:
    """Lines without their `\\n` (or `\\r\\n`), in order; a last line with no newline too.
    A line longer than `max_line_bytes` raises `LineTooLong` instead of being held whole."""
    pending = bytearray()
    number = 1

    def check() -> None:
        if max_line_bytes is not None and len(pending) > max_line_bytes:
            raise LineTooLong(number, max_line_bytes)

    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            pending += chunk[start:end]
            check()
            yield bytes(pending[:-1] if pending.endswith(b"\r") else pending)
            pending.clear()
            number += 1
            start = end + 1
        pending += chunk[start:]
        check()
    if pending:
        yield bytes(pending[:-1] if pending.endswith(b"\r") else pending)
