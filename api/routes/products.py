"""Catalog rows: GET /v1/products/{uid} (as served by the current index version, as plain text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api import schemas as s
from api.state import DOCUMENTED_AUTH, ApiError, ApiState, error_responses, version_of


def router(state: ApiState) -> APIRouter:
    routes = APIRouter()

    # {uid:path}: catalog uids may hold "/" (sent as is or as %2F)
    @routes.get(
        "/v1/products/{uid:path}",
        response_model=s.Product,
        tags=["catalog"],
        dependencies=DOCUMENTED_AUTH,
        summary="One catalog row by uid (as served by the current index version)",
        responses=error_responses(401, 404, 500, 503),
    )
    async def product(uid: str) -> s.Product:
        def lookup() -> tuple[Any, str | None]:
            snapshot = state.snapshot()
            return snapshot.get_by_uid(uid), version_of(snapshot)

        state.require_rag()
        row, version = await run_in_threadpool(lookup)
        if row is None:
            raise ApiError(404, f"no product with uid {uid!r} in index version {version}")
        from rag.safety import plain_text

        # plain text, also from an index built before cleaning removed markup (docs/api.md)
        return s.Product(
            uid=row.uid,
            title=plain_text(row.title).strip(),
            content=plain_text(row.content).strip(),
            index_version=version,
        )

    return routes
