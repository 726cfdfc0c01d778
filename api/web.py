"""The chat page at `/`: static HTML, CSS and one script from api/web/ (package data, no build step, no CDN).

    rag serve            # then open http://127.0.0.1:8000/ in a browser

The page only talks to this server's own API: it streams `POST /v1/chat/completions` (the final
chunk carries `sources` and `rag`), opens `GET /v1/products/{uid}` in a dialog and reads
`/readyz` and `/web/settings.json`. Everything it shows from the catalog or the model is inserted
as text (`textContent`), never parsed as HTML, and the Content-Security-Policy below allows no
inline script, no inline style and nothing from another origin, so markup in a catalog row stays
inert even if a future change forgot that rule.

The page's own paths (`PAGE_PATHS`) are served without the API key: they hold no catalog data, and
a browser cannot send a Bearer header when it opens a URL. With a key configured, the page asks
for it and sends it on every API request; it keeps the key in `sessionStorage` (this tab only,
gone when the tab closes). No CORS headers are sent: the page is same-origin, and other origins
get no access to the API from a browser.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse

# Nothing inline, nothing from elsewhere: 'self' for the script, the stylesheet, the icon and the
# API calls; no plugins, no <base>, no form posts, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

# file under api/web/ -> media type
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
SETTINGS_PATH = "/web/settings.json"
# Served without the API key (ApiKeyMiddleware's open paths): the page, its assets and its settings.
PAGE_PATHS = ["/", SETTINGS_PATH, *(f"/web/{name}" for name in ASSETS if name != "index.html")]

router = APIRouter(include_in_schema=False)


@cache
def asset(name: str) -> tuple[bytes, str]:
    """The bytes of api/web/`name` and their ETag (read once per process)."""
    if name not in ASSETS:
        raise KeyError(f"api/web/{name} is not one of the page's files ({', '.join(ASSETS)})")
    data = resources.files("api").joinpath("web").joinpath(name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def page_size_bytes() -> int:
    """Bytes the browser loads for the page: the HTML, the script, the stylesheet and the icon."""
    return sum(len(asset(name)[0]) for name in ASSETS)


def _serve(name: str, request: Request) -> Response:
    data, etag = asset(name)
    # no-cache: the browser revalidates each time (304 when unchanged), so an upgrade is seen at once
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(content=data, media_type=ASSETS[name], headers=headers)


@router.get("/")
async def page(request: Request) -> Response:
    return _serve("index.html", request)


@router.get(SETTINGS_PATH)
async def settings(request: Request) -> JSONResponse:
    """What the page needs to know about this server: limits, defaults and whether a key is needed."""
    state: Any = request.app.state.api
    config = state.config
    body = {
        "model": config.api.model_id,
        "default_k": config.retrieval.k,
        "max_k": config.api.max_k,
        "max_messages": config.api.max_messages,
        "max_question_chars": config.api.max_question_chars,
        "key_required": bool(state.api_key),
    }
    return JSONResponse(body, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


@router.get("/web/{name}")
async def page_asset(name: str, request: Request) -> Response:
    if name not in ASSETS or name == "index.html":
        raise HTTPException(404, f"no page file {name!r}; the page is at /")
    return _serve(name, request)
