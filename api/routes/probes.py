"""Probes and metrics: GET /healthz (liveness), /readyz (readiness), /metrics (Prometheus)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from api import schemas as s
from api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from api.state import DOCUMENTED_AUTH, ApiState, error_responses, version_of

log = logging.getLogger("api")


def router(state: ApiState) -> APIRouter:
    routes = APIRouter()

    @routes.get(
        "/healthz", response_model=s.Health, tags=["operations"], summary="Liveness: the process is up"
    )
    async def healthz() -> s.Health:
        return s.Health()

    @routes.get(
        "/readyz",
        response_model=s.Readiness,
        tags=["operations"],
        summary="Readiness: the index is loaded and verified",
        responses={503: {"model": s.Readiness, "description": "Not ready; `reason` says why."}},
    )
    async def readyz() -> Any:
        return await _readiness(state)

    @routes.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["operations"],
        dependencies=DOCUMENTED_AUTH,
        summary="Prometheus metrics (text exposition format 0.0.4)",
        responses={
            200: {
                "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                "description": "Requests by route and status, latency histograms, index version "
                "and rows, answers in flight, resident memory.",
            },
            **error_responses(401),
        },
    )
    async def metrics() -> PlainTextResponse:
        version = rows = None
        if state.rag is not None:
            try:
                snapshot = await run_in_threadpool(state.snapshot)
                version, rows = version_of(snapshot), getattr(snapshot, "rows", None)
            except Exception as exc:  # metrics must render even when the index is broken
                log.warning("metrics: no index snapshot: %s", exc)
        return PlainTextResponse(state.metrics.render(version, rows), media_type=METRICS_CONTENT_TYPE)

    return routes


async def _readiness(state: ApiState) -> Any:
    # no key is needed here: `reason` names files relative to <index.path>, never the server's own paths
    if state.rag is None:
        reason = state.load_error or "loading the index and models"
        return JSONResponse(
            s.Readiness(status="not_ready", reason=state.public(reason)).model_dump(), status_code=503
        )
    try:
        snapshot = await run_in_threadpool(state.snapshot)
    except Exception as exc:
        log.error("readiness check failed: %s", exc)
        return JSONResponse(
            s.Readiness(status="not_ready", reason=state.public(f"{type(exc).__name__}: {exc}")).model_dump(),
            status_code=503,
        )
    live = getattr(state.rag.retriever, "live_index", None)
    last_error = getattr(live, "last_error", None)
    return s.Readiness(
        status="ready",
        reason=state.public(last_error) if last_error else None,
        index_version=version_of(snapshot),
        rows=getattr(snapshot, "rows", None),
        embedding_model=getattr(snapshot, "embedding_model", None),
        generator=state.rag.generator.name,
    )
