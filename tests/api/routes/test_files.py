"""/v1/files through the official `openai` client against a live API process, on both stores."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
import sqlalchemy as sa

from llmq.db import session_scope
from llmq.models import File, FileChunk
from tests.conftest import RUN_ID, make_key
from tests.s3_helpers import s3_bucket
from tests.tenancy_helpers import ApiServer, chunked_upload

CAP_BYTES = 1_000_000  # LLMQ_MAX_FILE_BYTES of the small-cap server


def jsonl(lines: int) -> bytes:
    return b"".join(b'{"custom_id": "r%d", "body": {"n": %d}}\n' % (i, i) for i in range(lines))


@pytest.fixture(scope="module", params=["postgres", "s3"])
def server(request, environment) -> Iterator[ApiServer]:
    if request.param == "postgres":
        with running(ApiServer()) as api:
            yield api
    else:
        with s3_bucket(f"llmq-routes-{RUN_ID}") as env, running(ApiServer(env)) as api:
            yield api


class running:
    def __init__(self, api: ApiServer):
        self.api = api

    def __enter__(self) -> ApiServer:
        return self.api.wait_ready()

    def __exit__(self, *exc) -> None:
        self.api.stop()


def client_for(api: ApiServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)


def stored() -> tuple[int, int]:
    """Rows of `files` and `file_chunks`: what an upload that failed must not add to."""
    with session_scope() as session:
        return (
            session.scalar(sa.select(sa.func.count()).select_from(File)),
            session.scalar(sa.select(sa.func.count()).select_from(FileChunk)),
        )


def test_the_openai_client_uploads_reads_lists_and_deletes_a_file(server):
    client = client_for(server, make_key("files"))
    data = jsonl(200_000)  # ~9 MB: several chunks, and an S3 multipart upload
    created = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose) == (
        len(data), "requests.jsonl", "batch",
    )  # fmt: skip
    assert created.status == "processed" and created.expires_at is None
    assert client.files.retrieve(created.id) == created
    content = client.files.content(created.id)
    assert content.read() == data
    assert content.text == data.decode()

    second = client.files.create(file=("small.jsonl", b"{}\n"), purpose="batch")
    listed = [f.id for f in client.files.list(limit=1)]  # the client follows `after`
    assert listed == [second.id, created.id]
    assert [f.id for f in client.files.list(purpose="batch_output")] == []

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    assert [f.id for f in client.files.list()] == [second.id]


def test_another_key_cannot_see_read_or_delete_a_file(server):
    owner, other = client_for(server, make_key("owner")), client_for(server, make_key("other"))
    created = owner.files.create(file=("mine.jsonl", b'{"a": 1}\n'), purpose="batch")
    for call in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert list(other.files.list()) == []
    assert owner.files.content(created.id).read() == b'{"a": 1}\n'


def test_a_purpose_other_than_batch_is_400_naming_purpose(server):
    key = make_key("purpose")
    client, before = client_for(server, key), stored()
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("f.jsonl", b"{}\n"), purpose="fine-tune")
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == "purpose"
    # Sent after the file, the purpose is checked once the file is stored: it is removed.
    form = b'--B\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n{}\n\r\n'
    form += b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nvision\r\n--B--\r\n'
    response = httpx.post(
        f"{server.url}/v1/files",
        content=form,
        headers={
            "Authorization": f"Bearer {key}",
            "content-type": "multipart/form-data; boundary=B",
        },
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
    assert stored() == before and list(client.files.list()) == []


@pytest.fixture(scope="module")
def small_cap(environment) -> Iterator[ApiServer]:
    with running(ApiServer({"LLMQ_MAX_FILE_BYTES": str(CAP_BYTES)})) as api:
        yield api


def test_a_file_over_the_cap_is_413_and_leaves_nothing_behind(small_cap):
    key = make_key("cap")
    client = client_for(small_cap, key)
    assert client.files.create(file=("at.jsonl", b"x" * CAP_BYTES), purpose="batch")
    before = stored()
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("over.jsonl", b"x" * (CAP_BYTES + 1)), purpose="batch")
    assert refused.value.status_code == 413
    # Far more than the cap, chunked: refused while it is still being sent.
    file_part = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
    status, problem, sent = chunked_upload(
        small_cap.port,
        "/v1/files",
        {"Authorization": f"Bearer {key}"},
        around=(file_part, b"\r\n--B--\r\n"),
        content_type="multipart/form-data; boundary=B",
    )
    assert status == 413 and problem["error"]["code"] == "too_large", problem
    assert sent < 64 * 1_048_576, sent
    assert stored() == before
    assert [f.filename for f in client.files.list()] == ["at.jsonl"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files?after=a%00b",
        "/v1/files?purpose=a%00b",
        "/v1/files/file-%00",
        "/v1/files/%00/content",
    ],
)
def test_a_nul_in_an_id_or_filter_is_a_400_in_openais_envelope(server, path):
    response = httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {make_key()}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
