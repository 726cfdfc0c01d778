"""Run the API on loopback in a background thread (tests, benchmarks, notebooks).

    from api.testing import LiveServer
    with LiveServer(create_app(config)) as server:
        httpx.get(server.url + "/healthz")

The socket is bound to 127.0.0.1 on a free port before uvicorn starts, so there is no race for the
port; `url` is known as soon as the object exists.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", log_level: str = "warning") -> None:
        import uvicorn

        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        options: dict[str, Any] = {}
        state = getattr(getattr(app, "state", None), "api", None)
        if state is not None:  # an app of api.app: the same protocol settings as `rag serve`
            from api.protocol import server_options

            options = server_options(state.config)
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=2, **options)
        )
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._socket]},
            name=f"uvicorn-{self.port}",
            daemon=True,
        )

    def start(self, timeout: float = 20.0) -> Self:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server on {self.url} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = 60.0, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Poll /readyz until it answers 200; return its JSON (raise with the last reason on timeout)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            response = httpx.get(self.url + "/readyz", headers=headers, timeout=5)
            if response.status_code == 200:
                return response.json()
            last = response.json()
            time.sleep(0.05)
        raise RuntimeError(f"{self.url}/readyz not ready after {timeout} s: {last}")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
