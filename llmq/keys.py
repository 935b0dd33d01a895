"""API keys: made once, shown once, stored only as a SHA-256 hash.

A key is `llmq_` + 32 random base62 characters (about 190 bits) + a 6-character checksum
(CRC-32 of the random part, base62), so a mistyped or made-up key is refused before any
database query. The API caches lookups per process (`llmq.key_cache`); revoking a key
announces it there, so a revoked key fails at once.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid
import zlib
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmq import crypto
from llmq.errors import InvalidField, KeyNotFound, Unauthorized
from llmq.ledger import usd
from llmq.models import ApiKey

KEY_PREFIX = "llmq_"
BASE62 = string.digits + string.ascii_letters
RANDOM_CHARS = 32
CHECKSUM_CHARS = 6
KEY_LENGTH = len(KEY_PREFIX) + RANDOM_CHARS + CHECKSUM_CHARS
DISPLAY_PREFIX_CHARS = 12
BUDGET_PERIODS = ("day", "month")


@dataclass(frozen=True)
class Limits:
    """What a key may do; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str | None = None


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id, whether it may act on every key's data, its limits."""

    key_id: uuid.UUID
    name: str
    is_admin: bool
    limits: Limits = Limits()
    webhook_url: str | None = None


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(BASE62[digit])
    return "".join(reversed(chars))


def checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), CHECKSUM_CHARS)


def well_formed(plain: str) -> bool:
    """Prefix, length, alphabet and checksum: everything that needs no database."""
    if len(plain) != KEY_LENGTH or not plain.startswith(KEY_PREFIX):
        return False
    body = plain[len(KEY_PREFIX) :]
    if any(c not in BASE62 for c in body):
        return False
    random_part, check = body[:RANDOM_CHARS], body[RANDOM_CHARS:]
    return secrets.compare_digest(checksum(random_part), check)


def new_plain_key() -> str:
    random_part = "".join(secrets.choice(BASE62) for _ in range(RANDOM_CHARS))
    return KEY_PREFIX + random_part + checksum(random_part)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def validate_limits(limits: Limits) -> None:
    for name in ("rpm", "tpm", "max_concurrent"):
        value = getattr(limits, name)
        if value is not None and value < 1:
            raise InvalidField(name, f"{name} must be at least 1")
    if (limits.budget_usd is None) != (limits.budget_period is None):
        raise InvalidField("budget_usd", "give budget_usd and budget_period together")
    if limits.budget_period is not None and limits.budget_period not in BUDGET_PERIODS:
        raise InvalidField("budget_period", "budget_period is day or month")
    if limits.budget_usd is not None and limits.budget_usd <= 0:
        raise InvalidField("budget_usd", "budget_usd must be positive")


def create_key(
    session: Session,
    name: str,
    is_admin: bool = False,
    limits: Limits | None = None,
    webhook_url: str | None = None,
    fair_share_weight: float = 1.0,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plain key, which is never stored.

    Every key gets its own webhook signing secret, encrypted at rest (see `webhook_secret`).
    `fair_share_weight`: the key's share of a model's backlog against other keys'
    (`llmq.backlog`).
    """
    if not fair_share_weight > 0:
        raise InvalidField("fair_share_weight", "fair_share_weight must be positive")
    limits = limits or Limits()
    validate_limits(limits)
    plain = new_plain_key()
    row = ApiKey(
        id=uuid.uuid4(),
        name=name,
        prefix=plain[:DISPLAY_PREFIX_CHARS],
        key_hash=hash_key(plain),
        is_admin=is_admin,
        rpm=limits.rpm,
        tpm=limits.tpm,
        max_concurrent=limits.max_concurrent,
        budget_usd=limits.budget_usd,
        budget_period=limits.budget_period,
        webhook_url=webhook_url,
        webhook_secret_enc=crypto.encrypt(crypto.new_webhook_secret()),
        fair_share_weight=fair_share_weight,
    )
    session.add(row)
    session.flush()
    return row, plain


def webhook_secret(row: ApiKey) -> str:
    """The key's signing secret in clear, for the sender and for showing it to its owner."""
    if row.webhook_secret_enc is None:
        raise KeyNotFound(f"key {row.id} has no webhook secret")
    return crypto.decrypt(row.webhook_secret_enc)


def fair_share_weights(session: Session, key_ids: list[uuid.UUID]) -> dict[uuid.UUID, float]:
    """Each key's fair-share weight, for the feeder."""
    if not key_ids:
        return {}
    rows = session.execute(
        sa.select(ApiKey.id, ApiKey.fair_share_weight).where(ApiKey.id.in_(key_ids))
    )
    return {r.id: float(r.fair_share_weight) for r in rows}


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(sa.select(ApiKey).order_by(ApiKey.created_at)).scalars())


def find_key(session: Session, ident: str) -> ApiKey:
    """A key by id or by its display prefix."""
    query = sa.select(ApiKey)
    try:
        query = query.where(ApiKey.id == uuid.UUID(ident))
    except ValueError:
        query = query.where(ApiKey.prefix == ident)
    rows = list(session.execute(query).scalars())
    if len(rows) != 1:
        raise KeyNotFound(f"no single key matches {ident!r}")
    return rows[0]


def revoke_key(session: Session, ident: str) -> ApiKey:
    row = find_key(session, ident)
    if row.revoked_at is None:
        row.revoked_at = session.scalar(sa.select(sa.func.now()))
        session.flush()
    return row


def authenticate(session: Session, plain: str) -> Caller:
    if not well_formed(plain):
        raise Unauthorized("malformed API key")
    row = session.execute(
        sa.select(ApiKey).where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    return Caller(
        key_id=row.id,
        name=row.name,
        is_admin=row.is_admin,
        limits=Limits(row.rpm, row.tpm, row.max_concurrent, row.budget_usd, row.budget_period),
        webhook_url=row.webhook_url,
    )


def describe(row: ApiKey) -> dict:
    """The public shape of a key (never its hash or secret)."""
    return {
        "id": str(row.id),
        "object": "api_key",
        "name": row.name,
        "prefix": row.prefix,
        "admin": row.is_admin,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "max_concurrent": row.max_concurrent,
        "budget_usd": usd(row.budget_usd) if row.budget_usd is not None else None,
        "budget_period": row.budget_period,
        "webhook_url": row.webhook_url,
        "fair_share_weight": row.fair_share_weight,
    }
