"""An S3-compatible server for the tests: moto's, on a free port in a thread of this process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tests.tenancy_helpers import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_bucket(bucket: str) -> Iterator[dict[str, str]]:
    """A server holding one empty bucket. Yields the environment that points an llmq process
    at it; this process gets the AWS part of it until the server stops."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield {
            **AWS_ENV,
            "LLMQ_FILES_URL": f"s3://{bucket}/files",
            "LLMQ_FILES_S3_ENDPOINT_URL": endpoint,
        }
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
