"""The HTTP API: grounded answers, OpenAI-compatible chat completions, products, probes, metrics, admin.

    rag serve --host 127.0.0.1 --port 8000                 # api/cli.py
    python -c "from api.app import create_app; from rag.config import load_config; \
import uvicorn; uvicorn.run(create_app(load_config()), port=8000)"

`create_app(config, rag=None)` returns the FastAPI app. Without `rag` the pipeline (index, embedder,
generator) loads in a background thread at start-up: /healthz answers at once, /readyz says 503
until the index is loaded and verified. Retrieval and generation run in a thread pool sized to
`api.max_concurrency`; a request beyond that cap gets 429 with Retry-After at once (no queue), and
one slower than `api.request_timeout_s` gets 504. See docs/api.md for every route.

The routes are in routers by area: api/routes/ (probes, answers, products, admin), api/openai_compat.py
(the OpenAI-compatible ones) and api/web.py (the chat page); what they share is in api/state.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import openai_compat, web
from api import schemas as s
from api.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
    error_body,
    request_id_of,
)
from api.routes import admin, answers, probes, products
from api.routes.admin import ADMIN_PREFIX, UPDATE_PATH
from api.state import KINDS, ApiError, ApiState, Slot
from rag.config import Config

# ApiError, ApiState and Slot live in api/state.py (the routes share them); these names stay importable here
__all__ = ["ADMIN_PREFIX", "UPDATE_PATH", "ApiError", "ApiState", "Slot", "create_app"]

log = logging.getLogger("api")


# --------------------------------------------------------------------------- app


def create_app(config: Config, rag: Any = None) -> FastAPI:
    """The FastAPI app over `rag` (a rag.pipeline.RAG), or over one loaded from `config` at start-up."""
    state = ApiState(config, rag)
    # the routes by area, in the order they are matched (api/routes/, api/openai_compat.py, api/web.py)
    routers = [
        probes.router(state),
        answers.router(state),
        openai_compat.router(state),
        products.router(state),
        admin.router(state),
        web.router,
    ]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: threading.Thread | None = None
        if state.rag is None:
            loader = threading.Thread(target=_load, args=(state,), name="rag-load", daemon=True)
            loader.start()
        try:
            yield
        finally:
            state.executor.shutdown(wait=False, cancel_futures=True)
            state.update_executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="AmazonTitles RAG API",
        version="0.1.0",
        summary="Grounded answers about products of the AmazonTitles-1.3MM catalog, with sources.",
        description=(
            "Answers come from the catalog rows retrieved for the question; every answer lists its sources. "
            "`/v1/chat/completions` and `/v1/models` follow the OpenAI shapes (extra top-level fields "
            "`sources` and `rag`). When an API key is configured send it as `Authorization: Bearer <key>` "
            "or `X-API-Key: <key>`; admin routes need the admin key."
        ),
        lifespan=lifespan,
    )
    app.state.api = state
    # Added innermost first: RequestContext ends up outermost, so even 401/413 carry a request id.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=config.api.max_body_bytes,
        upload_path=UPDATE_PATH,
        max_upload_bytes=config.api.max_upload_bytes,
    )
    # The chat page (api/web.py) holds no data and a browser cannot send a key when it opens a URL:
    # its own paths are always open; its API calls send the key. Its responses carry the page's CSP.
    app.add_middleware(
        ApiKeyMiddleware,
        api_key=state.api_key,
        open_paths=[*config.api.open_paths, *web.PAGE_PATHS],
        admin_prefix=ADMIN_PREFIX,
        key_env=config.api.api_key_env,
    )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=state.metrics,
        route_of=lambda scope: _route_of([app.router, *routers], scope),
    )
    _install_error_handlers(app)
    openai_compat.install(app)  # its error shape wraps everything on the OpenAI paths
    for router in routers:
        app.include_router(router)
    _complete_openapi(app)
    return app


def _route_of(routers: list[Any], scope: dict[str, Any]) -> str | None:
    """The route template a request was for, when a middleware answered before routing (e.g. a 401).

    The routers' own routes are searched: FastAPI may keep an included router as one opaque entry."""
    from starlette.routing import Match

    for router in routers:
        for route in router.routes:
            path = getattr(route, "path", None)
            if path is not None and route.matches(scope)[0] == Match.FULL:
                return path
    return None


def _complete_openapi(app: FastAPI) -> None:
    """Add the models that only appear in the event stream (chunks) to the schema's components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from pydantic.json_schema import models_json_schema

            spec = generate()
            _, defs = models_json_schema(
                [(s.ChatCompletionChunk, "serialization")], ref_template="#/components/schemas/{model}"
            )
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in defs.get("$defs", {}).items():
                components.setdefault(name, schema)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


def _load(state: ApiState) -> None:
    """Load the pipeline and open (verify) the current index version; runs in a thread at start-up."""
    try:
        from rag.pipeline import RAG

        started = time.perf_counter()
        rag = RAG.from_config(state.config)
        warm_up = getattr(rag.generator, "warm_up", None)
        if callable(warm_up):  # an LLM loads now, before /readyz says ready, not on the first question
            warm_up()
        snapshot = rag.retriever.snapshot
        state.rag = rag
        log.info(
            "ready: index version %s (%s rows), generator %s, loaded in %.1fs",
            getattr(snapshot, "version", "?"),
            getattr(snapshot, "rows", "?"),
            rag.generator.name,
            time.perf_counter() - started,
        )
    except Exception as exc:  # keep serving /healthz and report the reason on /readyz
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("could not load the pipeline: %s", state.load_error)


def _install_error_handlers(app: FastAPI) -> None:
    def respond(
        request: Request,
        status: int,
        message: str,
        kind: str,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> JSONResponse:
        body = error_body(status, message, kind, request_id_of(request.scope), errors)
        return JSONResponse(content=json.loads(body), status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = getattr(exc, "kind", None) or KINDS.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; the routes are listed at /docs"
        return respond(request, exc.status_code, message, kind, dict(exc.headers or {}))

    async def index_unusable(request: Request, exc: Exception) -> JSONResponse:
        """The served index is damaged (a file truncated while served, unreadable SQLite): 503, the process lives."""
        log.error("request %s: the index cannot serve it: %s", request_id_of(request.scope), exc)
        state: ApiState = request.app.state.api
        what = (
            "the index metadata cannot be read"
            if isinstance(exc, sqlite3.DatabaseError)
            else "the index is damaged"
        )
        return respond(
            request, 503, f"{what}: {state.public(str(exc))}", "service_unavailable", {"Retry-After": "5"}
        )

    from index.store import IndexStoreError

    app.add_exception_handler(IndexStoreError, index_unusable)
    app.add_exception_handler(sqlite3.DatabaseError, index_unusable)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        parts = []
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ()) if p != "body"]
            where = ".".join(loc) or "body"
            parts.append(f"{where}: {error.get('msg')}")
            # never echo the input back (it may be huge, and it is the client's own data)
            errors.append(jsonable_encoder({k: v for k, v in error.items() if k in ("loc", "msg", "type")}))
        return respond(
            request, 422, "invalid request: " + "; ".join(parts), "invalid_request_error", errors=errors
        )
