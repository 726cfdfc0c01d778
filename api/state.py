"""What the API's routes share: the state (pipeline, concurrency slots, executors, keys, metrics),
the error type, the documented errors and authentication, and small answer helpers.

api/app.py builds the app from the routers of api/routes/ and api/openai_compat.py; they all
import this module, and none imports api.app (tests/test_layering.py checks it).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from api import schemas as s
from api.metrics import Metrics
from rag.config import Config

T = TypeVar("T")

KINDS = {
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
        self.kind = kind or KINDS.get(status, "error")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
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


# Declared for the OpenAPI schema; ApiKeyMiddleware enforces the key (so it covers every path).
BEARER = HTTPBearer(auto_error=False, description="The API key (or, on admin routes, the admin key).")
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key (or the admin key).")
DOCUMENTED_AUTH = [Security(BEARER), Security(KEY_HEADER)]
COMMON_ERRORS = (401, 413, 422, 500)


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


def state_of(request: Request) -> ApiState:
    return request.app.state.api


def check_limits(
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


def version_of(answer_snapshot: Any) -> str | None:
    version = getattr(answer_snapshot, "version", None)
    return str(version) if version is not None else None


def rag_info(answer: Any, index_version: str | None) -> s.RagInfo:
    return s.RagInfo(
        found=answer.found,
        grounded=answer.grounded,
        unsupported_sentences=list(answer.unsupported_sentences),
        timings={k: round(v, 6) for k, v in answer.timings.items()},
        generator=answer.generator,
        index_version=index_version,
    )


def sources(answer: Any) -> list[s.SourceModel]:
    return [s.SourceModel(**src.to_dict()) for src in answer.sources]


def record_stages(state: ApiState, answer: Any) -> None:
    for stage, seconds in answer.timings.items():
        if "." not in stage:  # the top-level stages; sub-stages (retrieve.embed) would multiply the series
            state.metrics.stages.observe(seconds, stage)
