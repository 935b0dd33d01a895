"""Secrets kept so they can be used again (webhook signing secrets): Fernet-encrypted at rest.

The key comes from `LLMQ_SECRET_KEY`, which `llmq api`, `worker`, `webhook-worker` and
`scheduler` refuse to start without. A local stack (`llmq dev`, `llmq demo`) without one keeps
a generated key in `LLMQ_SECRET_KEY_FILE` and hands it to its processes; a CLI command run by
hand from the same folder reads the same file.
"""

from __future__ import annotations

import base64
import os
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet

from llmq.settings import Settings, get_settings

WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_BYTES = 32


def new_webhook_secret() -> str:
    """`whsec_` + base64 of 32 random bytes, the Standard Webhooks form."""
    return (
        WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode()
    )


def _key_material(settings: Settings) -> bytes:
    if settings.secret_key:
        return settings.secret_key.encode()
    return local_key(settings.secret_key_file)


def local_key(path: Path) -> bytes:
    """The key kept in `path` for a local stack, made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
    return path.read_bytes().strip()


@lru_cache
def _fernet(material: bytes) -> Fernet:
    return Fernet(material)


def encrypt(plain: str, settings: Settings | None = None) -> str:
    return _fernet(_key_material(settings or get_settings())).encrypt(plain.encode()).decode()


def decrypt(token: str, settings: Settings | None = None) -> str:
    return _fernet(_key_material(settings or get_settings())).decrypt(token.encode()).decode()
