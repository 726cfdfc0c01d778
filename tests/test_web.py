"""The chat page at `/` (api/web.py, api/web/): its files and headers, then the page itself in a real browser.

    .venv/bin/python -m pytest tests/test_web.py -q

The browser tests start a real `rag serve` (a subprocess, on loopback) over a 300-row synthetic
catalog plus one hostile row whose title and description hold `<img src=x onerror=...>` and
`<script>`, and drive Debian's `chromium` headless over the DevTools protocol (tests/cdp.py). They
are skipped where no chromium is installed (`.ci/run` installs it). Set RAG_WEB_SCREENSHOT=FILE to
keep the screenshot of the chat (docs/img/web-chat.png is made that way).
"""

from __future__ import annotations

import asyncio
import html.parser
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.helpers import wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "api" / "web"
KEY_ENV = "RAG_TEST_WEB_KEY"
API_KEY = "web-test-key-789"
HOSTILE_UID = "HOSTILE0001"
HOSTILE_TITLE = 'Zanzibar Quokka Lantern <img src=x onerror="window.__xssHook=1">'
# The server strips markup from every text field (rag/safety.py plain_text); text that only looks
# like markup stays, so the page must still insert it as text: "<Your Name Here>" would vanish as an
# unknown element if it went through innerHTML.
LOOKALIKE = "<Your Name Here>"
HOSTILE_CONTENT = (
    "The Zanzibar Quokka Lantern is a brass lantern made by Tamsin Oyelaran, engraved "
    f"{LOOKALIKE}. "
    "<script>window.__xssHook=2</script> It lights small rooms "
    '<b onmouseover="window.__xssHook=3">without smoke</b>.'
)
ANCHOR_Q = "What is The Lighthouse Keeper's Daughter about?"
ANCHOR_UID = "1000000017"


# --------------------------------------------------------------------------- without a browser


def _client(api_key: str | None = None) -> Any:
    """A TestClient over the app without its lifespan: the page routes need no index."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from rag.config import load_config

    saved = os.environ.pop(KEY_ENV, None)
    if api_key:
        os.environ[KEY_ENV] = api_key
    try:
        app = create_app(load_config(None, [f"api.api_key_env={KEY_ENV}", "retrieval.k=4", "api.max_k=12"]))
    finally:
        os.environ.pop(KEY_ENV, None)
        if saved is not None:
            os.environ[KEY_ENV] = saved
    return TestClient(app)


def test_page_and_assets_are_served_with_the_csp() -> None:
    from api import web

    client = _client()
    types = {
        "/": "text/html",
        "/web/app.js": "text/javascript",
        "/web/app.css": "text/css",
        "/web/icon.svg": "image/svg+xml",
        "/web/settings.json": "application/json",
    }
    assert sorted(types) == sorted(web.PAGE_PATHS)
    for path, media in types.items():
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith(media), path
        csp = response.headers["content-security-policy"]
        directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
        assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'", csp
        assert directives["style-src"] == "'self'" and directives["connect-src"] == "'self'", csp
        assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'", csp
        assert "unsafe" not in csp and "http" not in csp and "*" not in csp, csp
        assert response.headers["x-content-type-options"] == "nosniff"
    page = client.get("/")
    assert client.get("/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    assert b"<textarea" in page.content
    assert client.get("/web/nothing.js").status_code == 404
    # the API's own docs page (a CDN-hosted Swagger UI) keeps working: the page's CSP is the page's only
    assert "content-security-policy" not in client.get("/docs").headers


def test_settings_tell_the_page_the_limits_and_whether_a_key_is_needed() -> None:
    assert _client().get("/web/settings.json").json() == {
        "model": "amazontitles-rag",
        "default_k": 4,
        "max_k": 12,
        "max_messages": 64,
        "max_question_chars": 2000,
        "key_required": False,
    }
    assert _client(API_KEY).get("/web/settings.json").json()["key_required"] is True


def test_page_is_open_with_an_api_key_but_the_api_is_not() -> None:
    client = _client(API_KEY)
    for path in ("/", "/web/app.js", "/web/app.css", "/web/icon.svg", "/web/settings.json"):
        assert client.get(path).status_code == 200, path
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert client.get("/web/../v1/models").status_code == 401  # no way round the key through the page's paths


def test_cors_is_off_by_default() -> None:
    client = _client()
    origin = {"Origin": "https://elsewhere.example"}
    preflight = client.options(
        "/v1/chat/completions",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code >= 400
    for response in (preflight, client.get("/", headers=origin), client.get("/v1/models", headers=origin)):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")], response.headers


class _Markup(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() -> None:
    markup = _Markup()
    markup.feed((WEB / "index.html").read_text(encoding="utf-8"))
    tags = dict(markup.tags)
    assert markup.script_text.strip() == "" and "style" not in tags
    scripts = [attrs for tag, attrs in markup.tags if tag == "script"]
    assert scripts == [{"src": "/web/app.js", "defer": None}]
    for tag, attrs in markup.tags:
        assert not [a for a in attrs if a.startswith("on") or a == "style"], (tag, attrs)
        for name in ("src", "href", "action"):
            if attrs.get(name) is not None:
                assert str(attrs[name]).startswith("/") and not str(attrs[name]).startswith("//"), (
                    tag,
                    attrs,
                )
    for path in WEB.iterdir():  # no CDN, no web font, no remote anything: the page works offline
        text = path.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text, re.IGNORECASE), (
            path.name
        )


def test_script_inserts_text_never_html() -> None:
    """The page's one rule: catalog/answer strings go in through textContent and text nodes only."""
    script = (WEB / "app.js").read_text(encoding="utf-8")
    code = re.sub(r"//[^\n]*", "", script)  # comments may name the sinks they avoid
    sinks = [
        r"\.innerHTML",
        r"\.outerHTML",
        r"insertAdjacentHTML",
        r"document\.write",
        r"\beval\s*\(",
        r"new\s+Function",
        r"DOMParser",
        r"createContextualFragment",
        r"\.srcdoc",
        r"setAttribute\(\s*[\"']on",
        r"setTimeout\(\s*[\"'`]",
        r"\.setHTML",
        r"javascript:",
    ]
    for sink in sinks:
        assert not re.search(sink, code), f"api/web/app.js uses {sink}"
    assert "textContent" in code and "createTextNode" in code
    assert (
        "localStorage" not in code and "document.cookie" not in code
    )  # the key lives in sessionStorage only
    assert "sessionStorage" in code


def _luminance(hex_colour: str) -> float:
    value = hex_colour.lstrip("#")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    channels = [int(value[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _css_schemes() -> dict[str, dict[str, str]]:
    css = (WEB / "app.css").read_text(encoding="utf-8")
    dark_at = css.index("@media (prefers-color-scheme: dark)")
    light = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{3,6});", css[:dark_at]))
    dark = {
        **light,
        **dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{3,6});", css[dark_at : css.index("}\n}", dark_at)])),
    }
    return {"light": light, "dark": dark}


# (text, background) pairs the stylesheet puts together
TEXT_PAIRS = [
    ("fg", "bg"),
    ("muted", "bg"),
    ("fg", "surface"),
    ("muted", "surface"),
    ("accent", "bg"),
    ("accent", "surface"),
    ("accent-fg", "accent"),
    ("fg", "user-bg"),
    ("muted", "user-bg"),
    ("mark-fg", "mark-bg"),
    ("notice-fg", "notice-bg"),
    ("error-fg", "surface"),
    ("error-fg", "bg"),
]


def test_colours_have_readable_contrast_in_both_schemes() -> None:
    assert round(_contrast("#777777", "#ffffff"), 2) == 4.48  # the check itself: just under AA
    for scheme, colours in _css_schemes().items():
        for fg, bg in TEXT_PAIRS:
            ratio = _contrast(colours[fg], colours[bg])
            assert ratio >= 4.5, f"{scheme}: --{fg} on --{bg} has contrast {ratio:.2f} (WCAG AA needs 4.5)"
        assert _contrast(colours["focus"], colours["bg"]) >= 3.0, scheme  # the focus ring (non-text: 3:1)


def test_the_page_ships_as_package_data_and_stays_small() -> None:
    from api import web

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    files = sorted(p.name for p in WEB.iterdir())
    assert files == sorted(web.ASSETS), "api/web/ and api.web.ASSETS list different files"
    for name in files:
        assert any(fnmatch(f"web/{name}", glob) for glob in globs), f"api/web/{name} is not in package-data"
    client = _client()
    served = sum(len(client.get("/" if name == "index.html" else f"/web/{name}").content) for name in files)
    assert served == web.page_size_bytes() == sum((WEB / name).stat().st_size for name in files)
    assert served < 40_000, f"the page grew to {served} bytes"


# --------------------------------------------------------------------------- in chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def web_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from index.build import build_index
    from rag.config import load_config
    from rag.synthetic import write_synthetic_catalog

    tmp = tmp_path_factory.mktemp("web-index")
    catalog = write_synthetic_catalog(tmp / "catalog.jsonl", rows=300, seed=0)
    with catalog.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"uid": HOSTILE_UID, "title": HOSTILE_TITLE, "content": HOSTILE_CONTENT}) + "\n")
    index_path = tmp / "index"
    build_index(
        load_config(None, [f"index.path={index_path}", "embedding.model=hashing:64"]),
        [catalog],
        progress=False,
    )
    return index_path


@contextmanager
def _rag_serve(index_path: Path, log: Path, *overrides: str, api_key: str | None = None) -> Iterator[str]:
    """A real `rag serve` subprocess on a free loopback port; yields its URL once /readyz says ready."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if api_key:
        env[KEY_ENV] = api_key
    command = [
        sys.executable,
        "-m",
        "rag.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--set",
        f"index.path={index_path}",
        "--set",
        "embedding.model=hashing:64",
        "--set",
        f"api.api_key_env={KEY_ENV}",
    ]
    for override in overrides:
        command += ["--set", override]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, log.read_text, poll_s=0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.cdp import Chromium, chromium_binary

    if chromium_binary() is None:
        pytest.skip("no chromium: install Debian's package (apt-get install -y chromium); .ci/run does")
    browser = Chromium.launch(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


DONE = "document.querySelectorAll('.msg.assistant[data-state=done]').length"


def _ask(page: Any, question: str, turns_before: int, timeout: float = 60) -> dict[str, Any]:
    """Type the question, press Enter (keyboard submit), wait for the answer; return what the page shows."""
    assert page.evaluate("document.activeElement.id") == "question"
    page.insert_text(question)
    page.press_enter()
    from tests.cdp import CDPError

    try:
        page.wait_for(
            f"{DONE} >= {turns_before + 1} || !!document.querySelector('.msg.assistant[data-state=error]')",
            timeout=timeout,
        )
    except CDPError as exc:
        state = page.evaluate(
            "JSON.stringify({turns: document.querySelectorAll('.turn').length,"
            " question: document.getElementById('question').value,"
            " active: document.activeElement && document.activeElement.id,"
            " send: document.getElementById('send').disabled,"
            " last: (([...document.querySelectorAll('.msg.assistant')].pop() || {}).dataset || {}).state,"
            " text: document.getElementById('conversation').innerText.slice(-400)})"
        )
        raise AssertionError(
            f"no answer to {question!r}: {exc}; the page: {state}; console: {page.console_errors()}"
        ) from None
    return _turn(page, turns_before)


def _turn(page: Any, index: int) -> dict[str, Any]:
    return page.evaluate(f"""(() => {{
      const turn = document.querySelectorAll('.turn')[{index}];
      const shown = (node) => {{ const copy = node.cloneNode(true);
        copy.querySelectorAll('.visually-hidden').forEach(h => h.remove()); return copy.textContent; }};
      const answer = turn.querySelector('.msg.assistant');
      return {{
        state: answer.dataset.state, ttft: Number(answer.dataset.ttftMs), total: Number(answer.dataset.totalMs),
        pieces: Number(answer.dataset.pieces), text: shown(answer.querySelector('.answer-text')),
        error: (answer.querySelector('.error') || {{}}).textContent || null,
        cites: [...answer.querySelectorAll('.answer-text a.cite')].map(a => [a.textContent, a.getAttribute('href')]),
        marks: [...answer.querySelectorAll('mark.unsupported')].map(shown),
        hidden: [...answer.querySelectorAll('mark.unsupported .visually-hidden')].map(h => h.textContent),
        cards: [...answer.querySelectorAll('.source-card')].map(c => ({{
          id: c.id, title: c.querySelector('.source-title').textContent,
          meta: c.querySelector('.source-meta').textContent,
          snippet: (c.querySelector('.source-snippet') || {{}}).textContent || ''}})),
        notFound: (answer.querySelector('.notice') || {{}}).textContent || null,
        note: (answer.querySelector('.note') || {{}}).textContent || null,
      }};
    }})()""")


@pytest.mark.integration
def test_chat_page_in_chromium(chromium: Any, web_index: Path, tmp_path: Path) -> None:
    """Key mode, a streamed answer with citations and source cards, a follow-up, hostile markup, not found, k."""
    with _rag_serve(web_index, tmp_path / "serve.log", api_key=API_KEY) as url:
        page = chromium.new_page(width=1000, height=760)
        page.navigate(url + "/")
        # labels for every control (focus on the question: the keyless test below, through _ask)
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('input, textarea, select')]"
            ".filter(e => !e.labels || e.labels.length === 0).map(e => e.id)"
        )
        assert unlabelled == []
        # the server wants a key: the page asks for it (focus moves to the key field)
        page.wait_for("!document.getElementById('key-form').hidden", timeout=20)
        assert page.evaluate("document.activeElement.id") == "api-key"
        page.insert_text("a-wrong-key")
        page.press_enter()
        page.wait_for("document.activeElement.id === 'question'")
        page.insert_text(ANCHOR_Q)
        page.press_enter()
        page.wait_for(
            "!document.getElementById('key-form').hidden && "
            "document.getElementById('key-reason').textContent.includes('refused')",
            timeout=30,
        )
        assert page.evaluate("document.querySelectorAll('.turn').length") == 0  # the refused turn is not kept
        page.insert_text(API_KEY)
        page.press_enter()  # the question asked without a valid key is sent again with it
        page.wait_for(f"{DONE} >= 1", timeout=60)
        first = _turn(page, 0)
        assert first["state"] == "done", first
        assert "Eleanor Whitcombe" in first["text"]
        assert first["cites"] and first["cites"][0] == ["[1]", "#" + first["cards"][0]["id"]], first
        assert len(first["cards"]) == 5  # k = retrieval.k by default
        card = first["cards"][0]
        assert card["id"].endswith("-src-1") and card["title"] == "The Lighthouse Keeper's Daughter"
        assert f"uid {ANCHOR_UID}" in card["meta"] and re.search(r"score \d\.\d{3}", card["meta"])
        assert "Eleanor Whitcombe" in card["snippet"]
        assert first["ttft"] >= 0 and first["total"] >= first["ttft"] and first["pieces"] >= 1
        assert page.evaluate(
            "sessionStorage.length === 1 && localStorage.length === 0 && document.cookie === ''"
        )
        # a citation link leads to its source card
        page.click(".turn:nth-child(1) a.cite")
        assert page.evaluate("document.activeElement.id") == card["id"]
        page.evaluate("document.getElementById('question').focus()")

        follow = _ask(page, "who wrote it?", 1)
        assert follow["state"] == "done", follow
        assert follow["cards"][0]["title"] == "The Lighthouse Keeper's Daughter", (
            follow
        )  # the history says which "it"

        hostile = _ask(page, "What is the Zanzibar Quokka Lantern?", 2)
        assert hostile["state"] == "done", hostile
        assert hostile["cards"][0]["title"] == "Zanzibar Quokka Lantern"  # the server stripped the markup
        assert (
            LOOKALIKE in hostile["text"] and LOOKALIKE in hostile["cards"][0]["snippet"]
        )  # inserted as text
        assert "__xssHook" not in hostile["text"] + hostile["cards"][0]["snippet"]
        page.click(".turn:nth-child(3) .source-title")  # the product view: the full catalog row
        page.wait_for(
            "document.getElementById('product').open && "
            "document.getElementById('product-uid').textContent === 'HOSTILE0001' && "
            "document.getElementById('product-title').textContent !== 'Loading…'",
            timeout=20,
        )
        product = page.evaluate(
            "({title: document.getElementById('product-title').textContent,"
            " content: document.getElementById('product-content').textContent,"
            " version: document.getElementById('product-version').textContent})"
        )
        assert product["title"] == "Zanzibar Quokka Lantern" and product["version"]
        assert LOOKALIKE in product["content"] and "lights small rooms" in product["content"]
        assert "__xssHook" not in product["content"] + product["title"]
        injected = page.evaluate(
            "document.querySelectorAll('main img, main script, main b, dialog img, dialog script,"
            " dialog b, [onerror], [onmouseover]').length"
        )
        assert injected == 0
        page.click("#product-content")
        assert page.evaluate("typeof window.__xssHook") == "undefined"  # no script ran
        page.press("Escape", 27)  # the keyboard closes the dialog, and focus goes back to the card's title
        page.wait_for("!document.getElementById('product').open")
        assert page.evaluate("document.activeElement.classList.contains('source-title')")

        page.evaluate("document.getElementById('question').focus()")
        absent = _ask(page, "Who wrote Qwxyzzy Flarnbottle Unobtainium?", 3)
        assert absent["state"] == "done" and absent["cards"] == []
        assert absent["notFound"] and absent["notFound"].startswith("No product found."), absent

        page.evaluate(
            "(() => { const k = document.getElementById('k'); k.value = '2'; "
            "document.getElementById('question').focus(); })()"
        )
        two = _ask(page, ANCHOR_Q, 4)
        assert len(two["cards"]) == 2, two  # the k control

        errors = [
            e for e in page.console_errors() if "status of 401" not in e
        ]  # the wrong key's 401 is expected
        assert errors == []  # no CSP violation, no exception
        assert page.evaluate("typeof window.__xssHook") == "undefined"
        shot = page.screenshot()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
        (tmp_path / "web-chat.png").write_bytes(shot)

        # a narrow screen: nothing wider than the viewport, the question box and the Ask button visible
        page.set_viewport(360, 740, mobile=True)
        time.sleep(0.3)
        layout = page.evaluate("""(() => {
          const box = (id) => document.getElementById(id).getBoundingClientRect();
          return {scroll: document.documentElement.scrollWidth, width: window.innerWidth,
                  question: box('question').right, send: box('send').right, sendBottom: box('send').bottom,
                  height: window.innerHeight};
        })()""")
        assert layout["scroll"] <= layout["width"], layout
        assert layout["question"] <= layout["width"] and layout["send"] <= layout["width"], layout
        assert layout["sendBottom"] <= layout["height"], layout
        loaded = page.evaluate(
            "performance.getEntriesByType('navigation')[0].decodedBodySize + "
            "performance.getEntriesByType('resource').filter(r => r.name.includes('/web/'))"
            ".reduce((n, r) => n + r.decodedBodySize, 0)"
        )
        print(
            f"\nweb page: {loaded} bytes loaded by the browser; "
            f"time to first token in the browser (extractive): {first['ttft']} ms, answer complete {first['total']} ms"
        )


class _FakeLLM:
    """An OpenAI-compatible server that streams scripted answers slowly (the `openai` backend's upstream)."""

    PIECES: ClassVar[list[str]] = [
        "The Lighthouse ",
        "Keeper's Daughter ",
        "[1] is a novel ",
        "by Eleanor Whitcombe. ",
        "It won the ",
        "Galactic Prize ",
        "for Interstellar ",
        "Pastry in 3021.",
    ]
    FOLLOW_UP: ClassVar[list[str]] = ["Eleanor Whitcombe ", "wrote it ", "[1]."]

    def __init__(self, delay: float) -> None:
        from fastapi import FastAPI
        from fastapi.responses import StreamingResponse

        self.requests: list[dict[str, Any]] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(body: dict[str, Any]) -> Any:
            self.requests.append(body)

            script = self.PIECES if len(self.requests) == 1 else self.FOLLOW_UP

            async def events() -> Any:
                for piece in script:
                    await asyncio.sleep(delay)
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        self.app = app


@pytest.mark.integration
def test_streaming_and_grounding_marks_with_the_openai_backend(
    chromium: Any, web_index: Path, tmp_path: Path
) -> None:
    """The answer grows on the page while it streams; the sentence no source supports is marked."""
    from api.testing import LiveServer

    fake = _FakeLLM(delay=0.25)
    with (
        LiveServer(fake.app) as llm,
        _rag_serve(
            web_index,
            tmp_path / "serve.log",
            "generator.backend=openai",
            f"generator.base_url={llm.url}/v1",
            "generator.model=fake",
        ) as url,
    ):
        page = chromium.new_page(width=1000, height=760)
        page.navigate(url + "/")
        page.wait_for("document.getElementById('server-status').textContent.startsWith('ready')", timeout=20)
        assert page.evaluate("document.activeElement.id") == "question"  # focus starts on the question
        page.evaluate("document.getElementById('k').value = '3'; document.getElementById('question').focus()")
        page.insert_text(ANCHOR_Q)
        page.press_enter()
        # part of the answer is on the page while the rest is still being written
        partial = page.wait_for(
            "(() => { const a = document.querySelector('.msg.assistant');"
            " return a && a.dataset.state === 'streaming' && a.getAttribute('aria-busy') === 'true'"
            " && a.querySelector('.answer-text').textContent.length > 0"
            " ? a.querySelector('.answer-text').textContent : ''; })()",
            timeout=30,
            interval=0.02,
        )
        page.wait_for(f"{DONE} >= 1", timeout=30)
        answer = _turn(page, 0)
        assert len(partial) < len(answer["text"]), (partial, answer["text"])
        assert answer["text"] == "".join(_FakeLLM.PIECES).strip()
        assert answer["pieces"] >= 3 and answer["total"] - answer["ttft"] >= 1000, answer
        assert answer["cites"] == [["[1]", "#t1-src-1"]]
        assert [card["title"] for card in answer["cards"]][:1] == ["The Lighthouse Keeper's Daughter"]
        assert len(answer["cards"]) == 3
        assert answer["marks"] == ["It won the Galactic Prize for Interstellar Pastry in 3021."]
        assert answer["hidden"] == [
            " (not supported by a source)"
        ]  # what a screen reader says about the mark
        assert answer["note"] and "grounding check" in answer["note"]
        assert "Eleanor Whitcombe" not in "".join(answer["marks"])  # the supported sentence is not marked
        assert fake.requests and fake.requests[0]["stream"] is True
        follow = _ask(page, "Who wrote it?", 1)
        assert follow["text"] == "Eleanor Whitcombe wrote it [1]." and follow["marks"] == [], (
            follow,
            (tmp_path / "serve.log").read_text()[-3000:],
        )
        assert follow["cards"][0]["title"] == "The Lighthouse Keeper's Daughter"
        prompt = json.dumps(fake.requests[1]["messages"])
        assert (
            ANCHOR_Q.replace("'", "") in prompt.replace("'", "") and "Galactic Prize" in prompt
        )  # the conversation reached the model
        # Stop: the stream is cut off mid-answer, and the unfinished turn stays out of the history
        page.insert_text("And is it for kids?")
        page.press_enter()
        page.wait_for(
            "(() => { const a = document.querySelectorAll('.msg.assistant')[2];"
            " return !!a && a.querySelector('.answer-text').textContent.length > 0; })()",
            timeout=30,
            interval=0.02,
        )
        page.click("#stop")
        page.wait_for(
            "document.querySelectorAll('.msg.assistant')[2].dataset.state === 'stopped'", timeout=10
        )
        assert page.evaluate(
            "!document.getElementById('send').disabled && document.getElementById('stop').hidden"
        )
        assert (
            page.evaluate(
                "document.querySelectorAll('.msg.assistant')[2].querySelector('.error').textContent"
            )
            == "Stopped."
        )
        shown_turns = page.evaluate("document.querySelectorAll('.turn').length")
        page.evaluate(
            "document.querySelectorAll('.turn')[2].remove()"
        )  # keep the screenshot to the two answers
        assert shown_turns == 3
        assert page.console_errors() == []
        print(
            f"\ntime to first token in the browser (openai backend, first piece after 250 ms upstream): "
            f"{answer['ttft']} ms, complete {answer['total']} ms, {answer['pieces']} pieces"
        )
        # the README's screenshot: the whole conversation in one frame
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport(900, min(int(height), 1400))
        page.evaluate("window.scrollTo(0, 0)")
        shot = page.screenshot()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        (tmp_path / "web-chat.png").write_bytes(shot)
        if os.environ.get("RAG_WEB_SCREENSHOT"):
            Path(os.environ["RAG_WEB_SCREENSHOT"]).write_bytes(shot)


@pytest.mark.integration
def test_hf_backend_with_a_lora_adapter_in_chromium(chromium: Any, web_index: Path, tmp_path: Path) -> None:
    """The real SmolLM2 through the `hf` backend with a LoRA adapter: the page streams its tokens."""
    from rag.models import is_pulled, model_path

    if not is_pulled("smollm2-135m"):
        pytest.skip(f"the real model is not pulled into {model_path('smollm2-135m')}: run `make model`")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path("smollm2-135m"))
    adapter = (
        tmp_path / "adapter"
    )  # an untrained adapter (B = 0): the backend's adapter path, the base's answers
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(
        adapter
    )
    del base
    with _rag_serve(
        web_index,
        tmp_path / "serve.log",
        "generator.backend=hf",
        "generator.model=smollm2-135m",
        f"generator.adapter={adapter}",
        "generator.device=cpu",
        "generator.max_new_tokens=16",
        "retrieval.k=2",
    ) as url:
        page = chromium.new_page(width=1000, height=760)
        page.navigate(url + "/")
        page.wait_for("document.getElementById('server-status').textContent.startsWith('ready')", timeout=30)
        answer = _ask(page, ANCHOR_Q, 0, timeout=120)
        assert answer["state"] == "done", (answer, (tmp_path / "serve.log").read_text()[-3000:])
        assert answer["text"].strip() and answer["pieces"] > 1, answer
        assert answer["cards"] and answer["cards"][0]["title"] == "The Lighthouse Keeper's Daughter"
        assert page.evaluate("document.querySelector('.turn .timing').textContent").endswith("· hf")
        page.click("#new-chat")  # a fresh conversation: the same question once the model is warm
        assert page.evaluate("document.querySelectorAll('.turn').length") == 0
        warm = _ask(page, ANCHOR_Q, 0, timeout=120)
        assert warm["state"] == "done" and warm["pieces"] > 1, warm
        assert page.console_errors() == []
        print(
            f"\ntime to first token in the browser (hf, SmolLM2-135M + LoRA, CPU, k=2): first question "
            f"{answer['ttft']} ms (complete {answer['total']} ms), asked again {warm['ttft']} ms "
            f"(complete {warm['total']} ms, {warm['pieces']} pieces)"
        )
