"""/v1/files: upload, list, read, download and delete files, in OpenAI's shapes.

Uploads are `multipart/form-data` streamed to the file store (`api.multipart`); downloads
stream back from it. Every route sees only the calling key's files.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api import deps, multipart
from api.openapi import openai_responses
from llmq.db import session_scope
from llmq.errors import BadRequest
from llmq.files import records
from llmq.files.store import FileStore
from llmq.keys import Caller
from llmq.models import File
from llmq.settings import Settings

PREFIX = "/v1/files"  # the routes answer in OpenAI's shapes
router = APIRouter(
    prefix=PREFIX,
    tags=["files"],
    route_class=deps.KeyedRoute,
    responses=openai_responses(400, 401, 503),
)


# Postgres text holds no NUL: a parameter with one is refused before it reaches a query.
NO_NUL = r"^[^\x00]*$"
FileId = Annotated[str, Path(max_length=200, pattern=NO_NUL)]


def upload_limit_bytes(settings: Settings) -> int:
    """The body limit of an upload: the largest file and the form around it."""
    return settings.max_file_bytes + multipart.FORM_OVERHEAD_BYTES


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


def file_object(row: File) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        purpose=row.purpose,
    )


def _check_field(name: str, value: str) -> None:
    if name == "purpose" and value not in records.UPLOAD_PURPOSES:
        raise BadRequest("purpose", f"purpose must be one of {list(records.UPLOAD_PURPOSES)}")


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(records.UPLOAD_PURPOSES)},
                    },
                }
            }
        },
    }
}


@router.post("", responses=openai_responses(400, 413), openapi_extra=UPLOAD_BODY)
async def upload(
    request: Request,
    caller: Caller = Depends(deps.caller),
    settings: Settings = Depends(deps.settings),
    store: FileStore = Depends(deps.file_store),
) -> FileObject:
    """Store the form's `file` as the key's, streamed: at most `LLMQ_MAX_FILE_BYTES`,
    counted as it arrives. The file is listed only once it is whole."""
    file_id = records.new_file_id()
    form = await multipart.read_form(
        request, store, file_id, max_file_bytes=settings.max_file_bytes, check_field=_check_field
    )
    try:
        if form.filename is None:
            raise BadRequest("file", "the form has no `file` part")
        if "purpose" not in form.fields:
            raise BadRequest("purpose", "the form has no `purpose` field")
        if "\x00" in form.filename:
            raise BadRequest("file", "the file name holds a NUL character")
        purpose, filename = form.fields["purpose"], form.filename

        def add() -> File:
            with session_scope() as session:
                return records.add_file(
                    session, file_id, caller.key_id, filename, purpose, form.size_bytes
                )

        return file_object(await run_in_threadpool(add))
    except Exception:
        await run_in_threadpool(store.delete, file_id)
        raise


@router.get("")
def list_files(
    after: str | None = Query(None, max_length=200, pattern=NO_NUL),
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = Query(None, max_length=200, pattern=NO_NUL),
    caller: Caller = Depends(deps.caller),
) -> FileList:
    """The key's files, newest first (`order=asc`: oldest first); page on with `after`."""
    with session_scope() as session:
        rows, has_more = records.list_files(
            session, caller.key_id, purpose=purpose, after=after, limit=limit, order=order
        )
        data = [file_object(row) for row in rows]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/{file_id}", responses=openai_responses(404))
def get_file(file_id: FileId, caller: Caller = Depends(deps.caller)) -> FileObject:
    with session_scope() as session:
        return file_object(records.get_file(session, file_id, caller.key_id))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
        **openai_responses(404),
    },
)
def file_content(
    file_id: FileId,
    caller: Caller = Depends(deps.caller),
    store: FileStore = Depends(deps.file_store),
) -> StreamingResponse:
    """The file's bytes as they were uploaded, streamed from the store."""
    with session_scope() as session:
        size = records.get_file(session, file_id, caller.key_id).bytes
    return StreamingResponse(
        store.open(file_id),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.delete("/{file_id}", responses=openai_responses(404))
def delete_file(
    file_id: FileId,
    caller: Caller = Depends(deps.caller),
    store: FileStore = Depends(deps.file_store),
) -> FileDeleted:
    records.delete_file(store, file_id, caller.key_id)
    return FileDeleted(id=file_id, deleted=True)
