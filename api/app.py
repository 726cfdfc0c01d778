"""The HTTP API: grounded answers, OpenAI-compatible chat completions, products, probes, metrics, admin.

    rag serve --host 127.0.0.1 --port 8000                 # api/cli.py
    python -c "from api.app import create_app; from rag.config import load_config; \
import uvicorn; uvicorn.run(create_app(load_config()), port=8000)"

`create_app(config, rag=None)` returns the FastAPI app. Without `rag` the pipeline (index, embedder,
generator) loads in a background thread at start-up: /healthz answers at once, /readyz says 503
until the index is loaded and verified. Retrieval and generation run in a thread pool sized to
`api.max_concurrency`; a request beyond that cap gets 429 with Retry-After at once (no queue), and
one slower than `api.request_timeout_s` gets 504. See docs/api.md for every route.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import schemas as s
from api import web
from api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from api.metrics import Metrics
from api.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
    error_body,
    keys_equal,
    request_id_of,
)
from rag.config import Config

log = logging.getLogger("api")

T = TypeVar("T")

ADMIN_PREFIX = "/v1/index/"
UPDATE_PATH = "/v1/index/update"

_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout_error",
    507: "insufficient_storage",
}


# an absolute path (after the start, a space, a quote or a bracket): "/srv/data/index/versions/v1/x.faiss"
_ABSOLUTE_PATH = re.compile(r"(^|[\s'\"(\[=])(/[^\s'\"()\[\]:;,]+)")


class ApiError(HTTPException):
    """An error answered as `{"error": {...}}` with the given status (and headers, e.g. Retry-After)."""

    def __init__(
        self, status: int, message: str, *, kind: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.kind = kind or _KINDS.get(status, "error")


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "Missing or wrong API key (when one is configured).",
        403: "Admin routes are disabled (no admin key configured).",
        404: "Not found.",
        409: "Another index update is running.",
        413: "Request body too large.",
        422: "Invalid request: a field is missing, has the wrong type, or is over its limit (named in the message).",
        429: "Too many answers in flight (api.max_concurrency); retry after the Retry-After seconds.",
        500: "Internal error; the message carries the request id that the server log has details under.",
        503: "The index is not loaded yet (or failed to load).",
        504: "The answer took longer than api.request_timeout_s.",
        507: "No space left on the server's disk for the upload or the new index version; nothing was written.",
    }
    return {code: {"model": s.ErrorResponse, "description": described[code]} for code in codes}


# --------------------------------------------------------------------------- state


class ApiState:
    """Everything the routes share: the pipeline, the concurrency cap, executors, keys, metrics."""

    def __init__(self, config: Config, rag: Any) -> None:
        api = config.api
        self.config = config
        self.rag = rag
        self.load_error: str | None = None
        # Keys are read once, here; they are never logged or echoed back.
        self.api_key = os.environ.get(api.api_key_env) or None
        self.admin_key = os.environ.get(api.admin_key_env) or None
        self.semaphore = asyncio.Semaphore(api.max_concurrency)
        self.in_flight = 0
        # One worker per concurrency slot: a slot holds at most one pending job, so nothing ever queues here.
        self.executor = ThreadPoolExecutor(max_workers=api.max_concurrency, thread_name_prefix="rag-answer")
        self.update_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-update")
        self.update_lock = asyncio.Lock()
        self.metrics = Metrics(in_flight=lambda: self.in_flight)
        self.model_created = int(time.time())

    # ---------------------------------------------------------------- readiness

    def require_rag(self) -> Any:
        if self.rag is None:
            reason = self.load_error or "the index and models are still loading"
            raise ApiError(503, f"not ready: {self.public(reason)}", headers={"Retry-After": "5"})
        return self.rag

    def public(self, text: str) -> str:
        """`text` without the server's absolute paths (for clients; the log keeps them): the index root
        becomes `<index.path>`, any other absolute path its last component."""
        root = Path(self.config.index.path)
        for name in sorted({str(root.resolve()), str(root.absolute()), str(root)}, key=len, reverse=True):
            if name not in ("", "."):
                text = text.replace(name, "<index.path>")
        return _ABSOLUTE_PATH.sub(
            lambda m: m.group(1) + ".../" + m.group(2).rstrip("/").rsplit("/", 1)[-1], text
        )

    def snapshot(self) -> Any:
        """The served index snapshot (blocking: may open and verify a new version)."""
        return self.require_rag().retriever.snapshot

    # ---------------------------------------------------------------- concurrency

    async def acquire_slot(self) -> Slot:
        """Take a concurrency slot without waiting, or answer 429."""
        if self.semaphore.locked():
            self.metrics.rejected.inc("concurrency")
            retry = str(self.config.api.retry_after_s)
            raise ApiError(
                429,
                f"too many requests in flight (api.max_concurrency={self.config.api.max_concurrency}); "
                f"retry after {retry} s",
                headers={"Retry-After": retry},
            )
        await self.semaphore.acquire()  # never suspends: the semaphore is not locked
        self.in_flight += 1
        return Slot(self)

    async def run(self, slot: Slot, fn: Callable[[], T], timeout: float) -> T:
        """Run blocking `fn` in the answer pool; 504 after `timeout` s (the slot stays taken until `fn` ends)."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        slot.track(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(timeout, 0.001))
        except asyncio.TimeoutError:
            raise ApiError(
                504,
                f"the answer took longer than api.request_timeout_s={self.config.api.request_timeout_s} s",
            ) from None


class Slot:
    """One concurrency slot; freed when released and no job it started is still running in a thread."""

    def __init__(self, state: ApiState) -> None:
        self.state = state
        self.pending: asyncio.Future[Any] | None = None
        self.released = False
        self.done = False

    def track(self, future: asyncio.Future[Any]) -> None:
        self.pending = future
        future.add_done_callback(self._job_done)

    def _job_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # mark it retrieved: a timed-out job's error must not be logged as "never retrieved"
        if self.pending is future:
            self.pending = None
        self._maybe_free()

    def release(self) -> None:
        self.released = True
        self._maybe_free()

    def _maybe_free(self) -> None:
        if self.released and self.pending is None and not self.done:
            self.done = True
            self.state.in_flight -= 1
            self.state.semaphore.release()


# --------------------------------------------------------------------------- helpers


def _state(request: Request) -> ApiState:
    return request.app.state.api


def _check_limits(
    config: Config, question: str, k: int | None, max_tokens: int | None, n_messages: int | None = None
) -> None:
    api = config.api
    if len(question) > api.max_question_chars:
        raise ApiError(
            422,
            f"the question is {len(question)} characters; the limit is "
            f"api.max_question_chars={api.max_question_chars}",
        )
    if not question.strip():
        raise ApiError(422, "the question is empty: ask something about a product")
    if k is not None and k > api.max_k:
        raise ApiError(422, f"k={k} is over the limit api.max_k={api.max_k}")
    if max_tokens is not None and max_tokens > api.max_tokens_cap:
        raise ApiError(
            422, f"max_tokens={max_tokens} is over the limit api.max_tokens_cap={api.max_tokens_cap}"
        )
    if n_messages is not None and n_messages > api.max_messages:
        raise ApiError(422, f"{n_messages} messages is over the limit api.max_messages={api.max_messages}")


def _version_of(answer_snapshot: Any) -> str | None:
    version = getattr(answer_snapshot, "version", None)
    return str(version) if version is not None else None


def _rag_info(answer: Any, index_version: str | None) -> s.RagInfo:
    return s.RagInfo(
        found=answer.found,
        grounded=answer.grounded,
        unsupported_sentences=list(answer.unsupported_sentences),
        timings={k: round(v, 6) for k, v in answer.timings.items()},
        generator=answer.generator,
        index_version=index_version,
    )


def _sources(answer: Any) -> list[s.SourceModel]:
    return [s.SourceModel(**src.to_dict()) for src in answer.sources]


def _record_stages(state: ApiState, answer: Any) -> None:
    for stage, seconds in answer.timings.items():
        if "." not in stage:  # the top-level stages; sub-stages (retrieve.embed) would multiply the series
            state.metrics.stages.observe(seconds, stage)


def _answer_blocking(
    state: ApiState,
    question: str,
    history: list[dict[str, str]],
    k: int | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
) -> tuple[Any, str | None]:
    rag = state.require_rag()
    snapshot = rag.retriever.snapshot  # one version for the answer and the label it reports
    version = _version_of(snapshot)
    answer = rag.answer(
        question,
        k=k,
        history=history,
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        snapshot=snapshot,
    )
    return answer, version


async def _answer(
    state: ApiState,
    question: str,
    history: list[dict[str, str]],
    k: int | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
) -> tuple[Any, str | None]:
    state.require_rag()
    slot = await state.acquire_slot()
    try:
        answer, version = await state.run(
            slot,
            lambda: _answer_blocking(state, question, history, k, max_tokens, temperature, top_p),
            state.config.api.request_timeout_s,
        )
    except ValueError as exc:  # the pipeline's own checks on the question
        raise ApiError(422, str(exc)) from None
    finally:
        slot.release()
    _record_stages(state, answer)
    return answer, version


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


# --------------------------------------------------------------------------- app


def create_app(config: Config, rag: Any = None) -> FastAPI:
    """The FastAPI app over `rag` (a rag.pipeline.RAG), or over one loaded from `config` at start-up."""
    state = ApiState(config, rag)

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
        RequestContextMiddleware, metrics=state.metrics, route_of=lambda scope: _route_of(app, scope)
    )
    _install_error_handlers(app)
    from api import openai_compat

    openai_compat.install(app)  # its error shape wraps everything on the OpenAI paths
    _add_routes(app, state)
    app.include_router(web.router)
    _complete_openapi(app)
    return app


def _route_of(app: FastAPI, scope: dict[str, Any]) -> str | None:
    """The route template a request was for, when a middleware answered before routing (e.g. a 401)."""
    from starlette.routing import Match

    for route in app.router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return getattr(route, "path", None)
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
        kind = getattr(exc, "kind", None) or _KINDS.get(exc.status_code, "error")
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


def _add_routes(app: FastAPI, state: ApiState) -> None:
    api = state.config.api
    # Declared for the OpenAPI schema; ApiKeyMiddleware enforces the key (so it covers every path).
    bearer = HTTPBearer(auto_error=False, description="The API key (or, on admin routes, the admin key).")
    key_header = APIKeyHeader(
        name="X-API-Key", auto_error=False, description="The API key (or the admin key)."
    )
    documented_auth = [Security(bearer), Security(key_header)]
    common_errors = (401, 413, 422, 500)

    def require_admin(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        header_key: str | None = Security(key_header),
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

    # ---------------------------------------------------------------- probes and metrics

    @app.get("/healthz", response_model=s.Health, tags=["operations"], summary="Liveness: the process is up")
    async def healthz() -> s.Health:
        return s.Health()

    @app.get(
        "/readyz",
        response_model=s.Readiness,
        tags=["operations"],
        summary="Readiness: the index is loaded and verified",
        responses={503: {"model": s.Readiness, "description": "Not ready; `reason` says why."}},
    )
    async def readyz() -> Any:
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
                s.Readiness(
                    status="not_ready", reason=state.public(f"{type(exc).__name__}: {exc}")
                ).model_dump(),
                status_code=503,
            )
        live = getattr(state.rag.retriever, "live_index", None)
        last_error = getattr(live, "last_error", None)
        return s.Readiness(
            status="ready",
            reason=state.public(last_error) if last_error else None,
            index_version=_version_of(snapshot),
            rows=getattr(snapshot, "rows", None),
            embedding_model=getattr(snapshot, "embedding_model", None),
            generator=state.rag.generator.name,
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["operations"],
        dependencies=documented_auth,
        summary="Prometheus metrics (text exposition format 0.0.4)",
        responses={
            200: {
                "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                "description": "Requests by route and status, latency histograms, index version "
                "and rows, answers in flight, resident memory.",
            },
            **_error_responses(401),
        },
    )
    async def metrics() -> PlainTextResponse:
        version = rows = None
        if state.rag is not None:
            try:
                snapshot = await run_in_threadpool(state.snapshot)
                version, rows = _version_of(snapshot), getattr(snapshot, "rows", None)
            except Exception as exc:  # metrics must render even when the index is broken
                log.warning("metrics: no index snapshot: %s", exc)
        return PlainTextResponse(state.metrics.render(version, rows), media_type=METRICS_CONTENT_TYPE)

    # ---------------------------------------------------------------- answers

    @app.post(
        "/v1/answer",
        response_model=s.AnswerResponse,
        tags=["answers"],
        dependencies=documented_auth,
        summary="Answer a question about a product, with its sources and timings",
        responses=_error_responses(*common_errors, 429, 503, 504),
    )
    async def answer(body: s.AnswerRequest, request: Request) -> s.AnswerResponse:
        _check_limits(state.config, body.question, body.k, body.max_tokens, len(body.history) + 1)
        history = [m.model_dump() for m in body.history]
        result, version = await _answer(
            state, body.question, history, body.k, body.max_tokens, body.temperature, body.top_p
        )
        data = result.to_dict()
        return s.AnswerResponse(
            question=data["question"],
            answer=data["answer"],
            sources=_sources(result),
            timings=data["timings"],
            found=data["found"],
            grounded=data["grounded"],
            unsupported_sentences=data["unsupported_sentences"],
            generator=data["generator"],
            index_version=version,
            request_id=request_id_of(request.scope),
        )

    from api import openai_compat

    openai_compat.add_routes(app, state, documented_auth=documented_auth, error_responses=_error_responses)

    # ---------------------------------------------------------------- products

    # {uid:path}: catalog uids may hold "/" (sent as is or as %2F)
    @app.get(
        "/v1/products/{uid:path}",
        response_model=s.Product,
        tags=["catalog"],
        dependencies=documented_auth,
        summary="One catalog row by uid (as served by the current index version)",
        responses=_error_responses(401, 404, 500, 503),
    )
    async def product(uid: str) -> s.Product:
        def lookup() -> tuple[Any, str | None]:
            snapshot = state.snapshot()
            return snapshot.get_by_uid(uid), _version_of(snapshot)

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

    # ---------------------------------------------------------------- admin

    @app.post(
        UPDATE_PATH,
        response_model=s.UpdateResponse,
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        summary="Upsert products (JSON lines) and delete uids; needs the admin key",
        description=(
            'Send JSON lines (`{"uid": ..., "title": ..., "content": ...}` one per line) as the raw body '
            "(Content-Type `application/x-ndjson`, `application/jsonl` or `text/plain`) or as the `file` field of "
            "a multipart form. Uids to delete go in repeated `delete` query parameters. One update runs at a "
            "time (409 for another); the served index switches to the new version when it is done. Bodies are "
            "limited to api.max_upload_bytes."
        ),
        openapi_extra={
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
        },
        responses=_error_responses(401, 403, 409, 413, 422, 500, 503, 507),
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
                paths = [upload] if received else []
                previous = _version_of(await run_in_threadpool(state.snapshot))
                started = time.perf_counter()

                def run_update() -> tuple[Any, Any]:
                    from index.build import update_index as do_update

                    report = do_update(
                        state.config,
                        paths,
                        delete_uids=list(delete),
                        progress=False,
                        embedder=getattr(rag.retriever, "embedder", None),
                    )
                    live = getattr(rag.retriever, "live_index", None)
                    snapshot = live.reload() if live is not None else rag.retriever.snapshot
                    return report, snapshot

                try:
                    report, snapshot = await asyncio.get_running_loop().run_in_executor(
                        state.update_executor, run_update
                    )
                except Exception as exc:
                    state.metrics.updates.inc("error")
                    _raise_update_error(exc, upload)
                state.metrics.updates.inc("ok")
                return s.UpdateResponse(
                    index_version=_version_of(snapshot),
                    previous_version=previous,
                    rows=getattr(snapshot, "rows", None),
                    seconds=round(time.perf_counter() - started, 3),
                    changed=bool(getattr(report, "changed", True)),
                    report=_report_dict(report, upload),
                )


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
