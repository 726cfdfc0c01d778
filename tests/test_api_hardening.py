"""Issue 12, points 7 and 10 (HTTP side): 4xx instead of 500, no server paths, uids with "/",
a request-head timeout, 401s counted under their route.

    .venv/bin/python -m pytest tests/test_api_hardening.py -q
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from index.build import build_index
from index.testing import hashing_config, write_catalog, write_rows

pytestmark = pytest.mark.integration

KEY_ENV, ADMIN_ENV = "RAG_HARDEN_API_KEY", "RAG_HARDEN_ADMIN_KEY"
KEY, ADMIN = "harden-key", "harden-admin"


def _serve(config: Any, rag: Any = None) -> Any:
    from api.app import create_app
    from api.testing import LiveServer

    os.environ[KEY_ENV], os.environ[ADMIN_ENV] = KEY, ADMIN
    try:
        app = create_app(config, rag)
    finally:
        del os.environ[KEY_ENV], os.environ[ADMIN_ENV]
    return LiveServer(app).start()


def _config(index_path: Path, *extra: str) -> Any:
    return hashing_config(
        index_path, extra=[f"api.api_key_env={KEY_ENV}", f"api.admin_key_env={ADMIN_ENV}", *extra]
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("harden")
    config = _config(tmp / "index", "api.header_timeout_s=0.6")
    rows = [
        {"uid": "A/B/1", "title": "The Slash Uid Almanac", "content": "An almanac whose uid holds slashes."},
        {"uid": "100%/x", "title": "The Percent Uid Atlas", "content": "An atlas."},
    ]
    build_index(
        config, [write_rows(tmp / "rows.jsonl", rows), write_catalog(tmp / "more.jsonl", 20)], progress=False
    )
    live = _serve(config)
    live.wait_ready()
    yield live
    live.stop()


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_lone_surrogate_in_a_message_is_a_4xx_with_the_reason(tmp_path: Path, minilm: Any) -> None:
    """With the real tokenizer a lone surrogate was a 500 (TypeError in the tokenizer); now 422 naming the message."""
    from rag.pipeline import RAG
    from rag.retrieval import Retriever

    config = _config(tmp_path / "index", "embedding.model=bundled:all-MiniLM-L6-v2")
    build_index(config, [write_catalog(tmp_path / "c.jsonl", 20)], progress=False, embedder=minilm)
    rag = RAG.from_config(config, retriever=Retriever.from_config(config, embedder=minilm))
    live = _serve(config, rag)
    try:
        url = live.url + "/v1/chat/completions"
        headers = {**AUTH, "content-type": "application/json"}
        bodies = [
            '{"messages": [{"role": "user", "content": "who wrote \\ud800 it?"}]}',
            '{"stream": true, "messages": [{"role": "user", "content": "who wrote \\udfff it?"}]}',
            (
                '{"messages": [{"role": "user", "content": "a \\ud83d"}, {"role": "assistant", "content": "b"},'
                ' {"role": "user", "content": "who wrote it?"}]}'
            ),
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": "who \\udc80 wrote it?"}]}]}',
        ]
        for body in bodies:
            response = httpx.post(url, content=body, headers=headers, timeout=30)
            assert response.status_code == 400, response.text  # the OpenAI routes answer 400, as OpenAI does
            message = response.json()["error"]["message"]
            assert "messages" in message and "lone UTF-16 surrogate" in message
        answer = httpx.post(live.url + "/v1/answer", content='{"question": "who \\ud800?"}', headers=headers)
        assert answer.status_code == 422
        history = '{"question": "who wrote it?", "history": [{"role": "user", "content": "x \\ud800"}]}'
        assert httpx.post(live.url + "/v1/answer", content=history, headers=headers).status_code == 422
        ok = httpx.post(
            url, json={"messages": [{"role": "user", "content": "who wrote it? \U0001f600"}]}, headers=AUTH
        )
        assert ok.status_code == 200, ok.text  # a real astral character (a surrogate *pair* in JSON) is fine
    finally:
        live.stop()


def test_admin_update_with_a_damaged_gz_is_422(tmp_path: Path) -> None:
    config = _config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "c.jsonl", 20)], progress=False)
    live = _serve(config)
    try:
        live.wait_ready()
        before = httpx.get(live.url + "/readyz").json()["index_version"]
        blob = gzip.compress(write_catalog(tmp_path / "new.jsonl", 200, start=100).read_bytes())
        for body, expected in (
            (blob[: len(blob) // 2], "the file is truncated"),
            (blob + b"garbage", "bytes that are not gzip follow the end of the gzip data"),
        ):
            response = httpx.post(
                live.url + "/v1/index/update", content=body, headers={"X-API-Key": ADMIN}, timeout=60
            )
            assert response.status_code == 422, response.text
            message = response.json()["error"]["message"]
            assert expected in message and "nothing was written" in message and str(tmp_path) not in message
        assert httpx.get(live.url + "/readyz").json()["index_version"] == before
    finally:
        live.stop()


def test_admin_update_on_a_full_disk_is_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC for real (FAISS writes to /dev/full): the server's disk, not the client's input, so 507."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    from index.vector import FaissIndex

    config = _config(tmp_path / "index", "index.compact_ratio=0.0001", "index.compact_min_rows=0")
    build_index(config, [write_catalog(tmp_path / "c.jsonl", 20)], progress=False)
    save = FaissIndex.save
    monkeypatch.setattr(FaissIndex, "save", lambda self, path: save(self, "/dev/full"))
    live = _serve(config)
    try:
        live.wait_ready()
        before = httpx.get(live.url + "/readyz").json()["index_version"]
        body = write_catalog(tmp_path / "new.jsonl", 5, start=100).read_bytes()
        response = httpx.post(
            live.url + "/v1/index/update", content=body, headers={"X-API-Key": ADMIN}, timeout=60
        )
        assert response.status_code == 507, response.text
        assert "no space left on the device" in response.json()["error"]["message"]
        assert httpx.get(live.url + "/readyz").json()["index_version"] == before
    finally:
        live.stop()


def test_readyz_shows_no_server_paths(tmp_path: Path) -> None:
    """/readyz needs no key, so its `reason` names files relative to <index.path>, never absolute paths."""
    config = _config(tmp_path / "index")
    report = build_index(config, [write_catalog(tmp_path / "c.jsonl", 20)], progress=False)
    damaged = Path(report.path) / "vectors.faiss"
    with open(damaged, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff")  # fails the sha256 check when the server opens it
    live = _serve(config)
    try:
        deadline = time.monotonic() + 30
        while (ready := httpx.get(live.url + "/readyz")).json()["reason"] in (
            None,
            "loading the index and models",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert f"<index.path>/versions/{report.version}/vectors.faiss" in reason, reason
        assert str(tmp_path) not in reason and not re.search(r"(^|[\s'\"(])/[a-z]", reason), reason
        other = httpx.get(live.url + "/v1/products/x", headers=AUTH).json()["error"][
            "message"
        ]  # 503 of a route
        assert str(tmp_path) not in other and "<index.path>" in other
    finally:
        live.stop()


def test_uids_with_slashes_can_be_fetched(served: Any) -> None:
    for path in ("A/B/1", "A%2FB%2F1"):
        response = httpx.get(served.url + f"/v1/products/{path}", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["uid"] == "A/B/1"
    assert (
        httpx.get(served.url + "/v1/products/100%25%2Fx", headers=AUTH).json()["title"]
        == "The Percent Uid Atlas"
    )
    assert httpx.get(served.url + "/v1/products/A/B", headers=AUTH).status_code == 404
    text = httpx.get(served.url + "/metrics", headers=AUTH).text
    assert 'route="/v1/products/{uid}",method="GET",status="200"' in text  # the label is unchanged


def test_401s_are_counted_under_their_route(served: Any) -> None:
    for _ in range(2):
        assert httpx.post(served.url + "/v1/answer", json={"question": "q"}).status_code == 401
    assert httpx.get(served.url + "/v1/products/A/B/1").status_code == 401
    text = httpx.get(served.url + "/metrics", headers=AUTH).text
    assert re.search(
        r'^rag_http_requests_total\{route="/v1/answer",method="POST",status="401"\} 2$', text, re.MULTILINE
    ), text
    assert re.search(
        r'^rag_http_requests_total\{route="/v1/products/\{uid\}",method="GET",status="401"\} 1$',
        text,
        re.MULTILINE,
    )
    assert 'route="unmatched",method="POST",status="401"' not in text


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it is still open after `seconds`."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_half_open_connections_are_closed_after_the_header_timeout(served: Any) -> None:
    """300 half-open connections stayed open for ever; now each gets api.header_timeout_s (0.6 s here)."""
    silent = [_connect(served.url) for _ in range(20)]  # connect, send nothing
    partial = [_connect(served.url) for _ in range(20)]  # a request line and half a header block
    for sock in partial:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    kept = _connect(served.url)  # a whole request, then the next one starts and stalls
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    started = time.monotonic()
    for sock in silent:
        assert _closed_within(sock, 5) == b""
    for sock in partial:
        reply = _closed_within(sock, 5)
        assert reply is not None and reply.startswith(b"HTTP/1.1 408 "), reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == 408
    reply = _closed_within(kept, 5)
    assert reply is not None and reply.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in reply, reply
    assert time.monotonic() - started < 4
    # a client that takes its time but finishes within the limit is served as before
    slow = _connect(served.url)
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(0.3)
    slow.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
    assert (_closed_within(slow, 5) or b"").startswith(b"HTTP/1.1 200 ")
    assert httpx.get(served.url + "/healthz").status_code == 200
    for sock in (*silent, *partial, kept, slow):
        sock.close()
