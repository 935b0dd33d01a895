"""API keys: made once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq.errors import Unauthorized
from llmq.models import ApiKey

KEY_PREFIX = "llmq_"
DISPLAY_PREFIX_CHARS = 12


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id, and whether it may act on every key's data."""

    key_id: uuid.UUID
    name: str
    is_admin: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plain key, which is never stored."""
    plain = KEY_PREFIX + secrets.token_urlsafe(30)
    row = ApiKey(
        id=uuid.uuid4(),
        name=name,
        prefix=plain[:DISPLAY_PREFIX_CHARS],
        key_hash=hash_key(plain),
        is_admin=is_admin,
    )
    session.add(row)
    session.flush()
    return row, plain


def authenticate(session: Session, plain: str) -> Caller:
    if not plain.startswith(KEY_PREFIX):
        raise Unauthorized("malformed API key")
    row = session.execute(
        sa.select(ApiKey).where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    return Caller(key_id=row.id, name=row.name, is_admin=row.is_admin)
