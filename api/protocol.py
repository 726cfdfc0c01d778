"""uvicorn's HTTP/1.1 (h11) protocol with a request-head read timeout, `api.header_timeout_s`.

    uvicorn.run(app, **server_options(config))        # api/cli.py (`rag serve`), api/testing.py

uvicorn times out idle keep-alive connections, but not a client that connects and then sends its
request line and headers slowly or never (half-open connections, "slowloris"): each one holds a
socket and a file descriptor for ever. Here every connection has `header_timeout_s` to deliver a
whole request head, counted from when it connects and, on a kept-alive connection, from the first
byte of the next request. When the time is up the server answers 408 (if part of a head arrived)
and closes the connection. Bodies and responses are not limited here (`api.request_timeout_s`
covers answers).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("api")


class HeaderTimeoutH11Protocol(H11Protocol):
    """H11Protocol that closes connections which do not send a whole request head in time."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # some bytes of the pending request head have arrived

    # uvicorn's H11Protocol narrows asyncio's BaseTransport to Transport; this override follows it
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        waiting = self._waiting_for_head()
        if waiting:
            self._head_started = True
            if self._head_timer is None:  # the next request on a kept-alive connection begins
                self._arm()
        super().data_received(data)
        if not self._waiting_for_head():  # the head is complete: the request runs, no timer
            self._disarm()
            self._head_started = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        if self._head_started:
            body = json.dumps(
                {
                    "error": {
                        "message": f"the request line and headers did not arrive within api.header_timeout_s="
                        f"{self.header_timeout_s} s",
                        "type": "timeout_error",
                        "code": 408,
                        "request_id": "-",
                    }
                }
            )
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body.encode()
            )
        log.debug(
            "closed a connection from %s: no whole request head within %.1f s",
            self.client,
            self.header_timeout_s,
        )
        self.transport.close()


def server_options(config: Any) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config that apply `config.api` (the head timeout)."""
    timeout = float(getattr(config.api, "header_timeout_s", HeaderTimeoutH11Protocol.header_timeout_s))
    protocol = type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": timeout})
    return {"http": protocol}
