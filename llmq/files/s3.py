"""The file store for scale: one object per file in an S3-compatible bucket (AWS S3, MinIO,
Ceph, R2...), through boto3.

A file of more than one part goes up as a multipart upload, one part at a time; S3 shows an
object only once its upload completes, so a writer that dies leaves nothing visible (an
aborted or abandoned upload holds storage until aborted: give the bucket an
`AbortIncompleteMultipartUpload` lifecycle rule). Writing a key again replaces the object.
Credentials and region come from the standard AWS environment.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from llmq.errors import FileNotFound
from llmq.files.store import CHUNK_BYTES, FileStore, rechunk

PART_BYTES = 8 * 1_048_576  # S3 takes parts of at least 5 MiB (all but the last)


def _client(endpoint_url: str | None) -> Any:
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("LLMQ_FILES_URL names S3: install llmq[s3] (boto3)") from exc
    return boto3.client("s3", endpoint_url=endpoint_url)


class S3FileStore(FileStore):
    def __init__(self, url: str, endpoint_url: str | None = None, part_bytes: int = PART_BYTES):
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.part_bytes = part_bytes
        self.client = _client(endpoint_url)  # thread-safe: one per process

    def key(self, file_id: str) -> str:
        return f"{self.prefix}/{file_id}" if self.prefix else file_id

    def put(self, file_id: str, chunks: Iterable[bytes]) -> int:
        where = {"Bucket": self.bucket, "Key": self.key(file_id)}
        pieces = rechunk(chunks, self.part_bytes)
        first = next(pieces, b"")
        if len(first) < self.part_bytes:  # rechunk: only the last piece is short
            self.client.put_object(**where, Body=first)
            return len(first)
        upload = {**where, "UploadId": self.client.create_multipart_upload(**where)["UploadId"]}
        try:
            parts, size = [], 0
            for number, piece in enumerate(itertools.chain((first,), pieces), 1):
                answer = self.client.upload_part(**upload, PartNumber=number, Body=piece)
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
                size += len(piece)
            self.client.complete_multipart_upload(**upload, MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(**upload)
            raise
        return size

    def open(self, file_id: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(file_id))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFound(file_id) from None
        return self._read(body)

    @staticmethod
    def _read(body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def delete(self, file_id: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(file_id))
