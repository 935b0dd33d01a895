"""File metadata rows (`files`), scoped to their API key, and the two steps that tie a row
to its bytes in the store: write the bytes, then the row; remove the row, then the bytes.

So a file is visible only once its bytes are whole, and a writer retried with the same id
(a batch finalizer after a crash) writes the same file again instead of a second one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from llmq.db import session_scope
from llmq.errors import FileNotFound, InvalidField
from llmq.files.store import FileStore
from llmq.models import File

UPLOAD_PURPOSES = ("batch",)  # what a client may upload
OUTPUT_PURPOSES = ("batch_output",)  # what llmq itself writes


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def get_file(session: Session, file_id: str, key_id: uuid.UUID) -> File:
    """The key's file; another key's file is not found, like a missing one."""
    row = session.scalar(sa.select(File).where(File.id == file_id, File.api_key_id == key_id))
    if row is None:
        raise FileNotFound(file_id)
    return row


def list_files(
    session: Session,
    key_id: uuid.UUID,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[File], bool]:
    """One page of the key's files by creation time, after the file `after`; and whether
    more follow."""
    query = sa.select(File).where(File.api_key_id == key_id)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    position = sa.tuple_(File.created_at, File.id)
    if after is not None:
        cursor = session.get(File, after)
        if cursor is None or cursor.api_key_id != key_id:
            raise InvalidField("after", "no such file")
        mark = sa.tuple_(sa.literal(cursor.created_at), sa.literal(cursor.id))
        query = query.where(position > mark if order == "asc" else position < mark)
    if order == "asc":
        query = query.order_by(File.created_at, File.id)
    else:
        query = query.order_by(File.created_at.desc(), File.id.desc())
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def add_file(
    session: Session, file_id: str, key_id: uuid.UUID, filename: str, purpose: str, size: int
) -> File:
    """The file's row; writing the same id again keeps the first row."""
    session.execute(
        insert(File)
        .values(id=file_id, api_key_id=key_id, filename=filename, purpose=purpose, bytes=size)
        .on_conflict_do_nothing(index_elements=[File.id])
    )
    return get_file(session, file_id, key_id)


def write_file(
    store: FileStore,
    key_id: uuid.UUID,
    filename: str,
    purpose: str,
    chunks: Iterable[bytes],
    file_id: str | None = None,
) -> File:
    """Store `chunks` as a new file of the key's (or again as `file_id`), then its row."""
    file_id = file_id or new_file_id()
    size = store.put(file_id, chunks)
    with session_scope() as session:
        return add_file(session, file_id, key_id, filename, purpose, size)


def delete_file(store: FileStore, file_id: str, key_id: uuid.UUID) -> None:
    """Remove the key's file: its row first (it is gone at once), then its bytes."""
    with session_scope() as session:
        row = get_file(session, file_id, key_id)
        session.delete(row)
    store.delete(file_id)
