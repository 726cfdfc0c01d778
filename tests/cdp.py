"""A small Chrome DevTools Protocol client for the browser tests: Debian's `chromium`, headless.

    with Chromium.launch(profile_dir) as browser:
        page = browser.new_page(width=1000, height=760)
        page.navigate("http://127.0.0.1:8000/")
        page.wait_for("document.querySelector('#question') !== null")

No browser download and no Selenium: the system binary (`/usr/bin/chromium`, `CHROMIUM` overrides
it) is started with `--remote-debugging-port=0`; the port it picks is read from the
DevToolsActivePort file in its profile directory, and commands go over one WebSocket
(`websockets`, sync client) with flattened target sessions. Events are kept per session, so a
test can look at console messages and exceptions afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+

CHROMIUM_FLAGS = [
    "--headless=new",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-pings",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",
]


def chromium_binary() -> str | None:
    """The chromium to drive: $CHROMIUM, else `chromium` (Debian's package) on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class CDPError(RuntimeError):
    """A DevTools command failed, or the page threw while evaluating an expression."""


class Chromium:
    """One headless chromium process and its browser-level DevTools connection."""

    def __init__(self, process: subprocess.Popen[bytes], ws: ClientConnection, log_path: Path) -> None:
        self.process = process
        self.ws = ws
        self.log_path = log_path
        self._next_id = 0
        self.events: dict[str | None, list[dict[str, Any]]] = {}

    @classmethod
    def launch(cls, profile_dir: Path, binary: str | None = None, timeout: float = 60.0) -> Chromium:
        binary = binary or chromium_binary()
        if binary is None:
            raise FileNotFoundError(
                "no chromium binary: install Debian's package (apt-get install -y chromium) "
                "or point CHROMIUM at one"
            )
        profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        flags = list(CHROMIUM_FLAGS)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
        log_path = profile_dir / "chromium.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [binary, *flags, f"--user-data-dir={profile_dir}", "about:blank"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise CDPError(
                    f"chromium exited with status {process.returncode} at start-up; see {log_path}"
                )
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) >= 2:
                break
            if time.monotonic() > deadline:
                process.kill()
                raise CDPError(f"chromium wrote no {port_file} within {timeout:.0f} s; see {log_path}")
            time.sleep(0.05)
        ws = connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None, open_timeout=timeout)
        return cls(process, ws, log_path)

    # ---------------------------------------------------------------- protocol

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"no answer to {method} within {timeout:.0f} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(
                        f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}"
                    )
                return reply.get("result", {})
            if "method" in reply:
                self.events.setdefault(reply.get("sessionId"), []).append(reply)

    def wait_event(
        self, method: str, *, session: str | None = None, timeout: float = 30.0, after: int = 0
    ) -> dict[str, Any]:
        """The first event `method` of `session` (at index >= `after` of its list); waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events.get(session, [])[after:]:
                if event["method"] == method:
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"no {method} event within {timeout:.0f} s")
            try:
                reply = json.loads(self.ws.recv(timeout=min(left, 0.5)))
            except TimeoutError:
                continue
            if "method" in reply:
                self.events.setdefault(reply.get("sessionId"), []).append(reply)

    def new_page(self, width: int = 1000, height: int = 760) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.set_viewport(width, height)
        return page

    def close(self) -> None:
        with contextlib.suppress(CDPError, OSError, TimeoutError, ConnectionClosed):
            self.send(
                "Browser.close", timeout=5
            )  # already gone, or refusing: the process is killed below anyway
        with contextlib.suppress(OSError, ConnectionClosed):
            self.ws.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab, driven through its flattened session."""

    def __init__(self, browser: Chromium, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def send(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.browser.events.setdefault(self.session, [])

    def set_viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        start = len(self.events)
        result = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise CDPError(f"could not open {url}: {result['errorText']}")
        self.browser.wait_event("Page.loadEventFired", session=self.session, timeout=timeout, after=start)

    def evaluate(self, expression: str, *, await_promise: bool = False, timeout: float = 30.0) -> Any:
        """The JSON value of a JavaScript expression in the page (raises CDPError if it throws)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"the page threw while evaluating {expression[:80]!r}: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.05) -> Any:
        """Poll `expression` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out after {timeout:.0f} s waiting for: {expression}")
            time.sleep(interval)

    def insert_text(self, text: str) -> None:
        """Type `text` into the focused element (as an input method would)."""
        self.send("Input.insertText", {"text": text})

    def press(self, key: str, code: int, text: str = "", modifiers: int = 0) -> None:
        """Press and release one key (keyDown with its text, then keyUp)."""
        base = {
            "key": key,
            "code": key,
            "windowsVirtualKeyCode": code,
            "nativeVirtualKeyCode": code,
            "modifiers": modifiers,
        }
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", **base, "text": text, "unmodifiedText": text})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})

    def press_enter(self) -> None:
        self.press("Enter", 13, "\r")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the first element matching `selector`."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        if box is None:
            raise CDPError(f"nothing matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations land here)."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails", {}).get("text")))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
                )
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(str(params["entry"].get("text")))
        return found
