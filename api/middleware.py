"""Pure ASGI middlewares of the API: request id + metrics + generic 500, API key, body size limit.

They are plain ASGI (not Starlette's BaseHTTPMiddleware) so streamed responses pass through
untouched and the body limit can count bytes as they arrive. Order, outermost first:
RequestContext -> ApiKey -> BodyLimit -> the FastAPI routes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import HTTPException

from api.metrics import Metrics

log = logging.getLogger("api")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def request_id_of(scope: Mapping[str, Any]) -> str:
    return str(scope.get("state", {}).get("request_id", "-"))


def error_body(
    status: int, message: str, kind: str, request_id: str, errors: list[dict[str, Any]] | None = None
) -> bytes:
    error: dict[str, Any] = {"message": message, "type": kind, "code": status, "request_id": request_id}
    if errors is not None:
        error["errors"] = errors
    return json.dumps({"error": error}, ensure_ascii=False).encode("utf-8")


async def send_error(
    send: Send, scope: Scope, status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> None:
    body = error_body(status, message, kind, request_id_of(scope))
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def keys_equal(given: str | None, expected: str) -> bool:
    """Constant-time comparison that does not leak the key's length either (both sides are hashed first)."""
    if given is None:
        return False
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8")).digest(), hashlib.sha256(expected.encode("utf-8")).digest()
    )


def presented_key(headers: dict[str, str], *extra_headers: str) -> str | None:
    """The key a client sent: `Authorization: Bearer KEY`, else `X-API-Key` (and any extra header names)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in ("x-api-key", *extra_headers):
        if headers.get(name):
            return headers[name]
    return None


def header_dict(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class RequestContextMiddleware:
    """Gives every request an id (X-Request-ID), records metrics, and turns crashes into a generic 500.

    The traceback goes to the server log with the request id; the client only sees the id.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, route_of: Callable[[Scope], str | None] | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of  # the route template of a request answered before routing (401, 413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header_dict(scope).get("x-request-id", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s %s %s failed", request_id, scope.get("method"), scope.get("path"))
            if not status_holder["started"]:
                await send_error(
                    send_with_id,
                    scope,
                    500,
                    f"internal error; the server log has the details under request id {request_id}",
                    "internal_error",
                )
        finally:
            route = scope.get("route")
            template = (
                getattr(route, "path", None)
                or (self.route_of(scope) if self.route_of else None)
                or "unmatched"
            )
            template = _CONVERTER.sub(r"{\1}", template)  # /v1/products/{uid:path} -> /v1/products/{uid}
            method = str(scope.get("method", ""))
            self.metrics.requests.inc(template, method, str(status_holder["status"]))
            self.metrics.latency.observe(time.perf_counter() - started, template, method)


class ApiKeyMiddleware:
    """Requires the API key (when one is configured) on every path except `open_paths` and admin paths.

    Admin paths check the admin key themselves (api.app.require_admin), so one header carries one key.
    """

    def __init__(
        self, app: ASGIApp, api_key: str | None, open_paths: list[str], admin_prefix: str, key_env: str
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = set(open_paths)
        self.admin_prefix = admin_prefix
        self.key_env = key_env

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.api_key:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in self.open_paths or path.startswith(self.admin_prefix):
            await self.app(scope, receive, send)
            return
        if not keys_equal(presented_key(header_dict(scope)), self.api_key):
            await send_error(
                send,
                scope,
                401,
                "missing or wrong API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                f"(the server reads it from the environment variable {self.key_env})",
                "authentication_error",
                {"www-authenticate": "Bearer"},
            )
            return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes its limit; FastAPI turns it into a 413."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes (the limit is {setting}={limit})")


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, upload_path: str, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_path = upload_path
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") == self.upload_path:
            limit, setting = self.max_upload_bytes, "api.max_upload_bytes"
        else:
            limit, setting = self.max_body_bytes, "api.max_body_bytes"
        declared = header_dict(scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(
                    send, scope, 400, f"invalid Content-Length header {declared!r}", "invalid_request_error"
                )
                return
            if int(declared) > limit:
                await send_error(
                    send, scope, 413, str(BodyTooLarge(limit, setting).detail), "request_too_large"
                )
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no route handler caught it (e.g. in a form parser)
            if started:
                raise
            await send_error(send, scope, 413, str(exc.detail), "request_too_large")
