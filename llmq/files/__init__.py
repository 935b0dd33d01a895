"""Files: metadata rows in Postgres (`records`) and bytes in a file store (`store`), chosen
by `LLMQ_FILES_URL`. No HTTP here: the API's routes and the batch finalizer use the same
calls from any process."""

from __future__ import annotations

from llmq.files.store import FileStore
from llmq.settings import Settings


def file_store(settings: Settings) -> FileStore:
    """The store `settings.files_url` names."""
    if settings.files_url.startswith("s3://"):
        from llmq.files.s3 import S3FileStore

        return S3FileStore(settings.files_url, settings.files_s3_endpoint_url)
    from llmq.files.postgres import PostgresFileStore

    return PostgresFileStore()
