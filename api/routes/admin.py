"""Admin routes (the admin key): POST /v1/index/update upserts JSON lines and deletes uids as a new version."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from api import schemas as s
from api.middleware import keys_equal
from api.state import BEARER, KEY_HEADER, ApiError, ApiState, error_responses, version_of

log = logging.getLogger("api")

ADMIN_PREFIX = "/v1/index/"
UPDATE_PATH = "/v1/index/update"

_UPDATE_DESCRIPTION = (
    'Send JSON lines (`{"uid": ..., "title": ..., "content": ...}` one per line) as the raw body '
    "(Content-Type `application/x-ndjson`, `application/jsonl` or `text/plain`) or as the `file` field of "
    "a multipart form. Uids to delete go in repeated `delete` query parameters. One update runs at a "
    "time (409 for another); the served index switches to the new version when it is done. Bodies are "
    "limited to api.max_upload_bytes."
)
_UPLOAD_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/x-ndjson": {"schema": {"type": "string", "description": "JSON lines"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSON lines file",
                        }
                    },
                }
            },
        },
    }
}


def admin_key_check(state: ApiState) -> Callable[..., None]:
    """The dependency of admin routes: the admin key, from `Authorization: Bearer` or `X-API-Key`;
    403 while no admin key is configured."""
    api = state.config.api

    def require_admin(
        credentials: HTTPAuthorizationCredentials | None = Security(BEARER),
        header_key: str | None = Security(KEY_HEADER),
    ) -> None:
        """The admin key, from `Authorization: Bearer` or `X-API-Key`; 403 while no admin key is configured."""
        if not state.admin_key:
            raise ApiError(
                403,
                f"admin routes are disabled: set the environment variable {api.admin_key_env} "
                f"(api.admin_key_env) to a secret and restart the server",
            )
        given = credentials.credentials if credentials is not None else header_key
        if not keys_equal(given, state.admin_key):
            raise ApiError(
                401,
                "missing or wrong admin key: send it as 'Authorization: Bearer <admin key>' or "
                f"'X-API-Key: <admin key>' (the server reads it from {api.admin_key_env})",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_admin


def router(state: ApiState) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        UPDATE_PATH,
        response_model=s.UpdateResponse,
        tags=["admin"],
        dependencies=[Depends(admin_key_check(state))],
        summary="Upsert products (JSON lines) and delete uids; needs the admin key",
        description=_UPDATE_DESCRIPTION,
        openapi_extra=_UPLOAD_BODY,
        responses=error_responses(401, 403, 409, 413, 422, 500, 503, 507),
    )
    async def update_index(
        request: Request,
        delete: list[str] = Query(
            default_factory=list, description="uids to delete (repeat the parameter for several)"
        ),
    ) -> s.UpdateResponse:
        rag = state.require_rag()
        if state.update_lock.locked():
            state.metrics.updates.inc("conflict")
            raise ApiError(409, "an index update is already running; retry when it has finished")
        async with state.update_lock:  # never suspends: the lock is free
            from index.store import IndexStore

            # under <index>/uploads/: removed at the end (finally), and by the next index writer's
            # clean-up if this process is killed meanwhile (IndexStore.upload_file, cleanup_leftovers)
            with IndexStore(state.config.index.path).upload_file() as upload:
                received = await _receive(request, upload, delete)
                return await _update(state, rag, [upload] if received else [], list(delete), upload)

    return routes


async def _receive(request: Request, upload: Path, delete: list[str]) -> int:
    """Store the upload; 507 when the server's disk is full, 422 when there is nothing to do."""
    try:
        received = await _save_upload(request, upload)
    except OSError as exc:  # a full disk under the index: the client's upload is not at fault
        log.error("could not store an upload under %s: %s", upload.parent, exc)
        raise ApiError(
            507,
            f"no room to store the upload on the server ({exc.strerror}); nothing was written",
            kind="insufficient_storage",
        ) from None
    if received == 0 and not delete:
        raise ApiError(
            422,
            "nothing to do: send JSON lines in the body (or a multipart `file`) "
            "and/or uids in `delete` query parameters",
        )
    return received


async def _update(
    state: ApiState, rag: Any, paths: list[Path], delete: list[str], upload: Path
) -> s.UpdateResponse:
    """Run the update in the update thread, reload the served index, and report both versions."""
    previous = version_of(await run_in_threadpool(state.snapshot))
    started = time.perf_counter()

    def run_update() -> tuple[Any, Any]:
        from index.build import update_index as do_update

        live = getattr(rag.retriever, "live_index", None)
        report = do_update(
            state.config,
            paths,
            delete_uids=delete,
            progress=False,
            embedder=getattr(rag.retriever, "embedder", None),
            store=getattr(live, "store", None),  # the reload then hashes only the update's new files
        )
        snapshot = live.reload() if live is not None else rag.retriever.snapshot
        return report, snapshot

    try:
        report, snapshot = await asyncio.get_running_loop().run_in_executor(state.update_executor, run_update)
    except Exception as exc:
        state.metrics.updates.inc("error")
        _raise_update_error(exc, upload)
    state.metrics.updates.inc("ok")
    return s.UpdateResponse(
        index_version=version_of(snapshot),
        previous_version=previous,
        rows=getattr(snapshot, "rows", None),
        seconds=round(time.perf_counter() - started, 3),
        changed=bool(getattr(report, "changed", True)),
        report=_report_dict(report, upload),
    )


def _report_dict(report: Any, upload: Path) -> dict[str, Any]:
    """The update report as JSON data, without the upload's server path (a file under <index>/uploads/)."""
    if dataclasses.is_dataclass(report):
        data = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    elif hasattr(report, "to_dict"):
        data = dict(report.to_dict())
    else:
        data = {"summary": str(report)}
    data.pop("path", None)
    summary = data.pop("read_summary", None)
    if summary is not None:
        read = summary.to_dict() if hasattr(summary, "to_dict") else dict(vars(summary))
        read.pop("sources", None)  # the upload's path; rejects_path stays (admins need it)
        data["read"] = read
    if hasattr(report, "summary"):
        data["summary"] = str(report.summary()).replace(str(upload), "<upload>")
    return json.loads(json.dumps(data, default=str))


async def _save_upload(request: Request, path: Path) -> int:
    """Write the raw body or the multipart `file` field to `path`; return the bytes written."""
    written = 0
    content_type = request.headers.get("content-type", "")
    with path.open("wb") as out:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=10)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(422, "multipart upload without a `file` field: send the JSON lines as `file`")
            while chunk := await upload.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
        else:
            async for chunk in request.stream():
                out.write(chunk)
                written += len(chunk)
    return written


def _raise_update_error(exc: Exception, upload: Path) -> None:
    from index.store import IndexLockedError, IndexStoreError

    message = str(exc).replace(str(upload), "<upload>")
    if isinstance(exc, IndexLockedError):
        raise ApiError(409, f"another process is writing the index: {message}") from None
    from index.build import DiskFullError

    if isinstance(exc, DiskFullError):  # the server's disk, not the client's input
        raise ApiError(507, f"update failed: {message}", kind="insufficient_storage") from None
    if isinstance(exc, (IndexStoreError, ValueError, UnicodeDecodeError)):
        raise ApiError(422, f"update rejected: {message}") from None
    raise exc
