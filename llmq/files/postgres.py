"""The default file store: a file's bytes as 1 MiB `bytea` rows of `file_chunks`.

It needs nothing but the database every process already has, so any API replica or worker
reads what another wrote. One transaction writes a whole file: a writer that dies leaves
nothing (Postgres rolls its transaction back), and concurrent writers of one id take turns on
an advisory lock, each replacing the content whole. Reads take one short query per chunk, so
a slow reader holds no connection between chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import sqlalchemy as sa

from llmq.db import session_scope
from llmq.errors import FileNotFound
from llmq.files.store import CHUNK_BYTES, FileStore, rechunk
from llmq.models import FileChunk


class PostgresFileStore(FileStore):
    def __init__(self, database_url: str | None = None):
        self.database_url = database_url  # None: the process's own database

    def put(self, file_id: str, chunks: Iterable[bytes]) -> int:
        size = 0
        with session_scope(self.database_url) as session:
            lock = sa.func.hashtextextended(f"llmq.file:{file_id}", 0)
            session.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
            session.execute(sa.delete(FileChunk).where(FileChunk.file_id == file_id))
            seq = -1
            for seq, piece in enumerate(rechunk(chunks, CHUNK_BYTES)):
                session.execute(sa.insert(FileChunk).values(file_id=file_id, seq=seq, data=piece))
                size += len(piece)
            if seq < 0:  # an empty file is one empty chunk, so that it exists
                session.execute(sa.insert(FileChunk).values(file_id=file_id, seq=0, data=b""))
        return size

    def open(self, file_id: str) -> Iterator[bytes]:
        with session_scope(self.database_url) as session:
            last = session.scalar(
                sa.select(sa.func.max(FileChunk.seq)).where(FileChunk.file_id == file_id)
            )
        if last is None:
            raise FileNotFound(file_id)
        return self._read(file_id, last)

    def _read(self, file_id: str, last: int) -> Iterator[bytes]:
        for seq in range(last + 1):
            with session_scope(self.database_url) as session:
                data = session.scalar(
                    sa.select(FileChunk.data).where(
                        FileChunk.file_id == file_id, FileChunk.seq == seq
                    )
                )
            if data is None:  # deleted while being read: fail rather than end short
                raise FileNotFound(file_id)
            if data:
                yield data

    def delete(self, file_id: str) -> None:
        with session_scope(self.database_url) as session:
            session.execute(sa.delete(FileChunk).where(FileChunk.file_id == file_id))
