"""The HTTP API against a real uvicorn server on loopback, with httpx and the official openai client.

    .venv/bin/python -m pytest tests/test_api.py -q

The index (a 300-row synthetic catalog, model-free `hashing:64` embedder) is built once per session
in a temp dir. A stub generator that blocks on an Event makes 429 and 504 deterministic.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

API_KEY = "test-api-key-123"
ADMIN_KEY = "test-admin-key-456"
KEY_ENV = "RAG_TEST_API_KEY"
ADMIN_ENV = "RAG_TEST_ADMIN_KEY"
ANCHOR_Q = "What is The Lighthouse Keeper's Daughter about?"
ANCHOR_UID = "1000000017"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


# --------------------------------------------------------------------------- fixtures


def _config(index_path: Path, *overrides: str) -> Any:
    from rag.config import load_config

    return load_config(
        None,
        [
            f"index.path={index_path}",
            "embedding.model=hashing:64",
            f"api.api_key_env={KEY_ENV}",
            f"api.admin_key_env={ADMIN_ENV}",
            *overrides,
        ],
    )


def _build(tmp: Path, rows: int = 300) -> Path:
    from index.build import build_index
    from rag.synthetic import write_synthetic_catalog

    catalog = write_synthetic_catalog(tmp / "catalog.jsonl", rows=rows, seed=0)
    index_path = tmp / "index"
    build_index(_config(index_path), [catalog], progress=False)
    return index_path


@pytest.fixture(scope="session")
def index_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("api-index"))


class _Env:
    """Set environment variables while an app is created (create_app reads the keys once)."""

    def __init__(self, **values: str | None) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for name, value in self.values.items():
            self.saved[name] = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def __exit__(self, *exc: object) -> None:
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _serve(
    config: Any, rag: Any = None, *, api_key: str | None = API_KEY, admin_key: str | None = ADMIN_KEY
) -> Any:
    from api.app import create_app
    from api.testing import LiveServer

    with _Env(**{KEY_ENV: api_key, ADMIN_ENV: admin_key}):
        app = create_app(config, rag)
    return LiveServer(app).start()


@pytest.fixture(scope="session")
def server(index_path: Path) -> Iterator[Any]:
    """Keys on; the pipeline loads itself in the background (the real start-up path)."""
    live = _serve(_config(index_path, "api.max_body_bytes=20000"))
    live.wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def rag(index_path: Path) -> Any:
    from rag.pipeline import RAG

    return RAG.from_config(_config(index_path))


class GateGenerator:
    """Blocks in generate/stream until `gate` is set; `mode="raise"` fails with a secret-looking message."""

    name = "gate"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.mode = "block"

    def generate(self, request: Any) -> str:
        self.entered.set()
        if self.mode == "raise":
            raise RuntimeError("SECRET-INTERNAL-DETAIL /srv/private/path")
        self.gate.wait(30)
        return "Stub answer [1]."

    def stream(self, request: Any) -> Iterator[str]:
        self.entered.set()
        yield "Stub "
        self.gate.wait(30)
        yield "answer [1]."


@pytest.fixture(scope="session")
def gate_server(index_path: Path, rag: Any) -> Iterator[tuple[Any, GateGenerator]]:
    from rag.pipeline import RAG

    generator = GateGenerator()
    config = _config(index_path, "api.max_concurrency=1", "api.request_timeout_s=2.0")
    live = _serve(config, RAG(config, rag.retriever, generator), api_key=None)
    yield live, generator
    generator.gate.set()
    live.stop()


@pytest.fixture
def gate(gate_server: tuple[Any, GateGenerator]) -> Iterator[tuple[Any, GateGenerator]]:
    live, generator = gate_server
    generator.reset()
    yield live, generator
    generator.gate.set()  # free any thread a test left blocked
    _wait_idle(live.url)


def _wait_idle(url: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(r"^rag_answers_in_flight 0$", httpx.get(url + "/metrics").text, re.MULTILINE):
            return
        time.sleep(0.02)
    raise AssertionError("answers still in flight")


def _openai(url: str, key: str = API_KEY) -> Any:
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == status and error["request_id"] == response.headers["x-request-id"]
    return error


def _openai_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error of the OpenAI routes: OpenAI's shape, a string (or null) code, the parameter at fault."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}, error
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["request_id"] == response.headers["x-request-id"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# --------------------------------------------------------------------------- probes, schema, metrics


def test_health_and_ready(server: Any) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()  # probes are open without the key
    assert ready["status"] == "ready" and ready["rows"] >= 300
    assert ready["index_version"].startswith("v") and ready["embedding_model"] == "hashing-64"


def test_not_ready_without_index(tmp_path: Path) -> None:
    live = _serve(_config(tmp_path / "no-index"), api_key=None)
    try:
        assert httpx.get(live.url + "/healthz").status_code == 200
        deadline = time.monotonic() + 20
        while True:  # the background loader fails fast; wait until it has reported
            response = httpx.get(live.url + "/readyz")
            if response.json().get("reason") != "loading the index and models" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status_code == 503 and "no index" in response.json()["reason"]
        error = _error(httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q}), 503)
        assert "not ready" in error["message"]
    finally:
        live.stop()


def test_not_ready_when_index_fails_verification(tmp_path: Path) -> None:
    index_path = _build(tmp_path, rows=50)
    vectors = next(index_path.glob("versions/*/vectors.faiss"))
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the checksum can tell
    vectors.write_bytes(bytes(data))
    live = _serve(_config(index_path), api_key=None)
    try:
        deadline = time.monotonic() + 20
        while (response := httpx.get(live.url + "/readyz")).json().get(
            "reason"
        ) == "loading the index and models":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert response.status_code == 503 and "sha256" in response.json()["reason"]
    finally:
        live.stop()


def test_openapi_documents_every_route(server: Any) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    expected = {
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("post", "/v1/answer"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{model}"),
        ("post", "/v1/chat/completions"),
        ("get", "/v1/products/{uid}"),
        ("post", "/v1/index/update"),
    }
    routes = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert expected <= routes, expected - routes
    app_routes = {
        (m.lower(), re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path))  # {uid:path} is {uid} in the schema
        for r in server.app.routes
        for m in getattr(r, "methods", ())
        if r.path not in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc") and m != "HEAD"
    }
    assert app_routes <= routes, app_routes - routes
    for method, path in expected:
        operation = spec["paths"][path][method]
        ok = operation["responses"]["200"]
        assert ok.get("content"), f"{method} {path}: 200 without a documented body"
        assert any("schema" in c for c in ok["content"].values())
        if path.startswith("/v1/"):
            assert "401" in operation["responses"], f"{method} {path}: 401 not documented"
            for code in ("401",):
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                shape = "/OpenAIErrorResponse" if "/chat/" in path or "/models" in path else "/ErrorResponse"
                assert schema["$ref"].endswith(shape), (path, schema)
    for path, invalid in (("/v1/answer", "422"), ("/v1/chat/completions", "400")):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"413", invalid, "429", "503", "504"} <= set(responses), path
        assert "requestBody" in spec["paths"][path]["post"]
    assert {"403", "409"} <= set(spec["paths"]["/v1/index/update"]["post"]["responses"])
    schemas = spec["components"]["schemas"]
    for name in (
        "AnswerRequest",
        "AnswerResponse",
        "ChatCompletionRequest",
        "ChatCompletion",
        "ChatCompletionChunk",
        "ModelList",
        "Product",
        "Readiness",
        "UpdateResponse",
        "ErrorResponse",
    ):
        assert name in schemas, name
    assert spec["paths"]["/v1/answer"]["post"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/AnswerResponse")
    assert "text/event-stream" in spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]


def test_metrics(server: Any) -> None:
    httpx.post(server.url + "/v1/answer", json={"question": ANCHOR_Q}, headers=AUTH)
    httpx.get(server.url + "/v1/products/does-not-exist", headers=AUTH)
    assert httpx.get(server.url + "/metrics").status_code == 401
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    answers = re.search(
        r'^rag_http_requests_total\{route="/v1/answer",method="POST",status="200"\} (\d+)$',
        text,
        re.MULTILINE,
    )
    assert answers and int(answers.group(1)) >= 1
    assert re.search(
        r'^rag_http_requests_total\{route="/v1/products/\{uid\}",method="GET",status="404"\} \d+$',
        text,
        re.MULTILINE,
    )
    assert re.search(
        r'^rag_http_request_duration_seconds_bucket\{route="/v1/answer",method="POST",le="\+Inf"\} \d+$',
        text,
        re.MULTILINE,
    )
    assert re.search(r'^rag_answer_stage_seconds_count\{stage="retrieve"\} \d+$', text, re.MULTILINE)
    assert re.search(r'^rag_index_info\{version="v\d+T\d+Z"\} 1$', text, re.MULTILINE)
    rows = re.search(r"^rag_index_rows (\d+)$", text, re.MULTILINE)
    assert rows and int(rows.group(1)) >= 300
    rss = re.search(r"^process_resident_memory_bytes (\d+)$", text, re.MULTILINE)
    assert rss and int(rss.group(1)) > 10_000_000


# --------------------------------------------------------------------------- auth and limits


def test_api_key_required(server: Any) -> None:
    body = {"question": ANCHOR_Q}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": API_KEY},
    ):
        response = httpx.post(server.url + "/v1/answer", json=body, headers=headers)
        error = _error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert KEY_ENV in error["message"] and API_KEY not in response.text
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"X-API-Key": API_KEY}).status_code == 200
    assert httpx.post(server.url + "/v1/answer", json=body, headers=AUTH).status_code == 200
    import openai

    with pytest.raises(openai.AuthenticationError):
        _openai(server.url, key="wrong").models.list()


def test_body_too_large(server: Any) -> None:
    big = json.dumps({"question": "x" * 30_000})
    error = _error(
        httpx.post(
            server.url + "/v1/answer", content=big, headers={**AUTH, "content-type": "application/json"}
        ),
        413,
    )
    assert "api.max_body_bytes=20000" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"question": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}'

    response = httpx.post(
        server.url + "/v1/answer", content=chunks(), headers={**AUTH, "content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert "api.max_body_bytes" in _error(response, 413)["message"]


def test_validation_limits(server: Any) -> None:
    def post(path: str, body: Any) -> dict[str, Any]:
        return _error(httpx.post(server.url + path, json=body, headers=AUTH), 422)

    assert "api.max_question_chars=2000" in post("/v1/answer", {"question": "q" * 2001})["message"]
    assert "api.max_k=20" in post("/v1/answer", {"question": ANCHOR_Q, "k": 21})["message"]
    assert "question" in post("/v1/answer", {"question": ""})["message"]
    assert "question" in post("/v1/answer", {})["message"]
    assert "nope" in post("/v1/answer", {"question": ANCHOR_Q, "nope": 1})["message"]
    response = httpx.post(
        server.url + "/v1/answer", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    _error(response, 422)

    def chat_post(body: Any, param: str) -> dict[str, Any]:  # the OpenAI route: 400, OpenAI's error shape
        return _openai_error(
            httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH), 400, param
        )

    chat = {"model": "amazontitles-rag", "messages": [{"role": "user", "content": ANCHOR_Q}]}
    assert "api.max_tokens_cap=1024" in chat_post({**chat, "max_tokens": 5000}, "max_tokens")["message"]
    assert (
        "api.max_tokens_cap"
        in chat_post({**chat, "max_completion_tokens": 5000}, "max_completion_tokens")["message"]
    )
    assert (
        "user message"
        in chat_post(
            {
                **chat,
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            },
            "messages",
        )["message"]
    )
    assert "messages" in chat_post({"model": "amazontitles-rag", "messages": []}, "messages")["message"]
    long_chat = {**chat, "messages": [{"role": "user", "content": "q" * 2001}]}
    assert "api.max_question_chars" in chat_post(long_chat, "messages")["message"]


def test_concurrency_cap_429_and_timeout_504(gate: tuple[Any, GateGenerator]) -> None:
    live, generator = gate
    results: dict[str, httpx.Response] = {}
    first = threading.Thread(
        target=lambda: results.setdefault(
            "first", httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q}, timeout=30)
        )
    )
    first.start()
    assert generator.entered.wait(10)
    busy = httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q})
    error = _error(busy, 429)
    assert busy.headers["retry-after"] == "1" and "api.max_concurrency=1" in error["message"]
    first.join(10)
    timeout_error = _error(results["first"], 504)  # request_timeout_s=2.0
    assert "api.request_timeout_s" in timeout_error["message"]
    # the timed-out work still runs in its thread, so the slot stays taken: no queue, still 429
    _openai_error(
        httpx.post(
            live.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": ANCHOR_Q}]}
        ),
        429,
        code="rate_limit_exceeded",
    )
    assert httpx.get(live.url + "/healthz").status_code == 200  # probes are never capped
    generator.gate.set()
    _wait_idle(live.url)
    generator.reset()
    generator.gate.set()
    ok = httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q})
    assert ok.status_code == 200 and ok.json()["answer"] == "Stub answer [1]."
    metrics = httpx.get(live.url + "/metrics").text
    assert re.search(r'^rag_http_rejected_total\{reason="concurrency"\} [2-9]', metrics, re.MULTILINE)
    assert re.search(
        r'^rag_http_requests_total\{route="/v1/answer",method="POST",status="504"\} 1$', metrics, re.MULTILINE
    )


def test_stream_timeout_mid_stream_ends_with_error_event(gate: tuple[Any, GateGenerator]) -> None:
    live, _ = gate
    body = {"stream": True, "messages": [{"role": "user", "content": ANCHOR_Q}]}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "Stub "
    error = json.loads(events[-2])["error"]
    assert (
        error["code"] == "timeout" and "api.request_timeout_s" in error["message"] and error["param"] is None
    )


def test_client_disconnect_mid_stream_frees_the_slot(gate: tuple[Any, GateGenerator]) -> None:
    live, generator = gate
    body = {"stream": True, "messages": [{"role": "user", "content": ANCHOR_Q}]}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if '"Stub "' in line)
    # the client is gone; the generator is still blocked in its thread, holding the one slot
    _error(httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q}), 429)
    generator.gate.set()
    _wait_idle(live.url)
    assert httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q}).status_code == 200


def test_internal_error_is_generic(gate: tuple[Any, GateGenerator]) -> None:
    live, generator = gate
    generator.mode = "raise"
    response = httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q})
    error = _error(response, 500)
    assert error["request_id"] in error["message"]
    assert "SECRET" not in response.text and "Traceback" not in response.text and "/srv" not in response.text


# --------------------------------------------------------------------------- answers and products


def test_answer(server: Any) -> None:
    from rag.synthetic import ANCHOR_QUESTIONS

    question, uid, phrase = ANCHOR_QUESTIONS[1]
    response = httpx.post(server.url + "/v1/answer", json={"question": question, "k": 3}, headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["found"] and data["grounded"] and data["unsupported_sentences"] == []
    assert data["sources"][0]["uid"] == uid and len(data["sources"]) <= 3
    assert phrase in data["answer"]
    assert data["timings"]["total"] > 0 and data["generator"] == "extractive"
    assert data["index_version"].startswith("v") and data["request_id"] == response.headers["x-request-id"]


def test_answer_follow_up_uses_history(server: Any) -> None:
    history = [
        {"role": "user", "content": ANCHOR_Q},
        {"role": "assistant", "content": "A novel about Maren Holt."},
    ]
    data = httpx.post(
        server.url + "/v1/answer", json={"question": "Who wrote it?", "history": history}, headers=AUTH
    ).json()
    assert data["sources"][0]["uid"] == ANCHOR_UID and "Eleanor Whitcombe" in data["answer"]


def test_model_output_is_json_not_html(server: Any) -> None:
    question = "<script>alert(1)</script> What is The Lighthouse Keeper's Daughter about?"
    response = httpx.post(server.url + "/v1/answer", json={"question": question}, headers=AUTH)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["question"] == question  # returned as JSON data, untouched


def test_products(server: Any) -> None:
    response = httpx.get(server.url + f"/v1/products/{ANCHOR_UID}", headers=AUTH)
    assert response.status_code == 200
    product = response.json()
    assert product["title"] == "The Lighthouse Keeper's Daughter" and "Maren Holt" in product["content"]
    error = _error(httpx.get(server.url + "/v1/products/NOPE123", headers=AUTH), 404)
    assert "NOPE123" in error["message"] and "index version" in error["message"]
    _error(httpx.get(server.url + "/v1/no-such-route", headers=AUTH), 404)


# --------------------------------------------------------------------------- OpenAI compatibility


def test_models_with_openai_client(server: Any) -> None:
    client = _openai(server.url)
    assert [m.id for m in client.models.list()] == ["amazontitles-rag"]
    assert client.models.retrieve("amazontitles-rag").id == "amazontitles-rag"
    import openai

    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_completion_with_openai_client(server: Any) -> None:
    client = _openai(server.url)
    completion = client.chat.completions.create(
        model="amazontitles-rag",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": ANCHOR_Q}],
    )
    assert completion.object == "chat.completion" and completion.model == "amazontitles-rag"
    text = completion.choices[0].message.content
    assert "Maren Holt" in text and completion.choices[0].finish_reason == "stop"
    extra = completion.model_extra
    assert extra["sources"][0]["uid"] == ANCHOR_UID and extra["rag"]["grounded"] is True
    from rag.tokens import stated_tokenizer

    assert completion.usage.completion_tokens == stated_tokenizer().count(
        text
    )  # tests/test_openai_compat.py: more
    # follow-up: earlier turns are the history
    follow = client.chat.completions.create(
        model="amazontitles-rag",
        messages=[
            {"role": "user", "content": ANCHOR_Q},
            {"role": "assistant", "content": text},
            {"role": "user", "content": [{"type": "text", "text": "Who wrote it?"}]},
        ],
    )
    assert "Eleanor Whitcombe" in follow.choices[0].message.content


def test_chat_completion_streaming_with_openai_client(server: Any) -> None:
    client = _openai(server.url)
    messages = [{"role": "user", "content": ANCHOR_Q}]
    whole = (
        client.chat.completions.create(model="amazontitles-rag", messages=messages).choices[0].message.content
    )
    chunks = list(
        client.chat.completions.create(
            model="amazontitles-rag", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # the first piece comes alone; pieces queued meanwhile are coalesced into later chunks
    assert streamed == whole and len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(final) == 1 and final[0].model_extra["sources"][0]["uid"] == ANCHOR_UID
    from rag.tokens import stated_tokenizer

    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == stated_tokenizer().count(whole)


def test_chat_stream_raw_sse(server: Any) -> None:
    body = {"model": "amazontitles-rag", "stream": True, "messages": [{"role": "user", "content": ANCHOR_Q}]}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    final = json.loads(lines[-2][6:])
    assert final["choices"][0]["finish_reason"] == "stop" and final["sources"] and "rag" in final
    # streaming validation errors still get a status code, before any event
    bad = {**body, "messages": [{"role": "user", "content": "q" * 3000}]}
    _openai_error(httpx.post(server.url + "/v1/chat/completions", json=bad, headers=AUTH), 400, "messages")


# --------------------------------------------------------------------------- admin update


def test_admin_update_end_to_end(tmp_path: Path, rag: Any) -> None:
    index_path = _build(tmp_path, rows=100)
    live = _serve(_config(index_path))
    try:
        live.wait_ready()
        url = live.url + "/v1/index/update"
        new = {
            "uid": "ZZNEW00001",
            "title": "The Quillwort Almanac of Tidal Gardens",
            "content": "The Quillwort Almanac of Tidal Gardens is a field guide by Perpetua Lindqvist.",
        }
        lines = json.dumps(new) + "\n"
        # the API key is not the admin key
        _error(httpx.post(url, content=lines, headers=AUTH), 401)
        _error(httpx.post(url, content=lines), 401)
        _error(httpx.post(url, content=lines, headers={"Authorization": "Bearer nope"}), 401)
        _error(httpx.post(url, headers={"X-API-Key": ADMIN_KEY}), 422)  # nothing to do
        before = httpx.get(live.url + "/readyz").json()
        response = httpx.post(
            url,
            content=lines,
            headers={"Authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/x-ndjson"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["previous_version"] == before["index_version"] != report["index_version"]
        assert report["rows"] == before["rows"] + 1 and report["report"]["inserted"] == 1
        assert str(tmp_path) not in report["report"].get("summary", "").split("rejects:")[0]
        ready = httpx.get(live.url + "/readyz").json()
        assert ready["index_version"] == report["index_version"]
        answer = httpx.post(
            live.url + "/v1/answer",
            headers=AUTH,
            json={"question": "Who wrote The Quillwort Almanac of Tidal Gardens?"},
        ).json()
        assert answer["sources"][0]["uid"] == "ZZNEW00001" and "Perpetua Lindqvist" in answer["answer"]
        # multipart upload + deletion by uid
        response = httpx.post(
            url + "?delete=ZZNEW00001",
            headers={"X-API-Key": ADMIN_KEY},
            files={"file": ("rows.jsonl", b"", "application/x-ndjson")},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["report"]["deleted"] == 1
        _error(httpx.get(live.url + "/v1/products/ZZNEW00001", headers=AUTH), 404)
        response = httpx.post(
            url,
            headers={"X-API-Key": ADMIN_KEY},
            files={"file": ("rows.jsonl", lines.encode(), "application/x-ndjson")},
            timeout=60,
        )
        assert response.status_code == 200 and response.json()["report"]["inserted"] == 1
        assert httpx.get(live.url + "/v1/products/ZZNEW00001", headers=AUTH).status_code == 200
    finally:
        live.stop()


def test_admin_update_no_op_and_too_many_rejects(tmp_path: Path) -> None:
    """Issue 12: a no-op update commits nothing (200, changed false); mostly rejected input is a 422."""
    import tempfile

    from index.store import IndexStore

    index_path = _build(tmp_path, rows=60)
    store = IndexStore(index_path)
    history = store.complete_versions()
    tmp_before = set(Path(tempfile.gettempdir()).glob("rag-upload-*"))
    live = _serve(_config(index_path))
    try:
        live.wait_ready()
        url = live.url + "/v1/index/update"
        headers = {"X-API-Key": ADMIN_KEY, "content-type": "application/x-ndjson"}
        before = httpx.get(live.url + "/readyz").json()["index_version"]
        for body in (
            ("\n".join(["{oops"] * 3) + "\n").encode("utf-16"),
            b"{bad\n{bad\n" + b'{"uid": "Q1", "title": "Fine"}\n',
        ):
            error = _error(httpx.post(url, content=body, headers=headers, timeout=60), 422)
            assert "catalog.max_reject_fraction" in error["message"] or "no usable rows" in error["message"]
            assert "nothing was written" in error["message"]
        for params in ("", "?delete=not-a-uid"):  # nothing to change: no upload rows / a uid not in the index
            body = b"" if params else b"\n\n"
            response = httpx.post(url + params, content=body, headers=headers, timeout=60)
            assert response.status_code == 200, response.text
            data = response.json()
            assert data["changed"] is False and data["index_version"] == data["previous_version"] == before
            assert data["report"]["summary"].startswith("nothing to change")
        assert store.complete_versions() == history and store.current_version() == before
        assert list(store.uploads_dir.iterdir()) == []  # uploads lived under the index and are gone
        assert set(Path(tempfile.gettempdir()).glob("rag-upload-*")) == tmp_before
    finally:
        live.stop()


def test_admin_upload_is_written_under_the_index(
    index_path: Path, rag: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import index.build

    seen: dict[str, Any] = {}

    def recording_update(config: Any, paths: Any, *args: Any, **kwargs: Any) -> Any:
        seen["paths"] = [Path(p) for p in paths]
        seen["existed"] = all(p.exists() for p in seen["paths"])
        raise ValueError("stub update stopped")

    monkeypatch.setattr(index.build, "update_index", recording_update)
    live = _serve(_config(index_path), rag)
    try:
        _error(
            httpx.post(
                live.url + "/v1/index/update",
                content=b'{"uid": "A1", "title": "t"}\n',
                headers={"X-API-Key": ADMIN_KEY},
                timeout=30,
            ),
            422,
        )
    finally:
        live.stop()
    (upload,) = seen["paths"]
    assert seen["existed"] and upload.parent == index_path / "uploads"
    assert not upload.exists()  # removed on the way out, also after an error


def test_admin_update_conflict_409(index_path: Path, rag: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import index.build

    entered, release = threading.Event(), threading.Event()

    def slow_update(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(20)
        raise ValueError("stub update stopped")

    monkeypatch.setattr(index.build, "update_index", slow_update)
    live = _serve(_config(index_path), rag)
    try:
        url = live.url + "/v1/index/update"
        headers = {"X-API-Key": ADMIN_KEY}
        results: dict[str, httpx.Response] = {}
        first = threading.Thread(
            target=lambda: results.setdefault(
                "r", httpx.post(url, content=b'{"uid": "A1", "title": "t"}\n', headers=headers, timeout=30)
            )
        )
        first.start()
        assert entered.wait(10)
        error = _error(httpx.post(url, content=b'{"uid": "A2", "title": "t"}\n', headers=headers), 409)
        assert "already running" in error["message"]
        release.set()
        first.join(10)
        assert "stub update stopped" in _error(results["r"], 422)["message"]
    finally:
        release.set()
        live.stop()


def test_admin_disabled_without_admin_key(index_path: Path, rag: Any) -> None:
    live = _serve(_config(index_path), rag, api_key=None, admin_key=None)
    try:
        error = _error(
            httpx.post(
                live.url + "/v1/index/update", content=b"{}\n", headers={"Authorization": "Bearer anything"}
            ),
            403,
        )
        assert ADMIN_ENV in error["message"] and "disabled" in error["message"]
        # no API key configured: the other routes are open
        assert httpx.post(live.url + "/v1/answer", json={"question": ANCHOR_Q}).status_code == 200
    finally:
        live.stop()


# --------------------------------------------------------------------------- docs and CLI


@pytest.mark.parametrize("doc_name", ["docs/api.md", "README.md"])
def test_documented_openai_example_runs(
    server: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any, doc_name: str
) -> None:
    """The `openai` example of the docs, run as written (only the port differs)."""
    doc = (Path(__file__).resolve().parents[1] / doc_name).read_text(encoding="utf-8")
    match = re.search(r"<!-- example: openai -->\s*```python\n(.*?)```", doc, re.DOTALL)
    assert match, f"{doc_name} lost its openai example"
    code = match.group(1).replace("http://127.0.0.1:8000", server.url)
    monkeypatch.setenv("RAG_API_KEY", API_KEY)
    exec(compile(code, doc_name, "exec"), {})
    out = capsys.readouterr().out
    assert "Maren Holt" in out and ANCHOR_UID in out


def test_serve_help_lists_host_and_port() -> None:
    from rag.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "--host", "127.0.0.1", "--port", "9001", "--set", "api.max_k=5"])
    assert args.host == "127.0.0.1" and args.port == 9001 and args.overrides == ["api.max_k=5"]


def test_request_models_never_crash_on_odd_input(server: Any) -> None:
    """Fuzz the request models: random JSON of the wrong shapes gets 200 or 422 (the OpenAI route:
    200, 400 or 404 for a model it does not serve), never a 500."""
    import random

    rng = random.Random(1234)
    atoms: list[Any] = [
        None,
        True,
        0,
        -1,
        10**12,
        1.5,
        float("1e308"),
        float("nan"),
        float("inf"),
        "",
        "x",
        "ü" * 50,
        [],
        {},
        [1, "a"],
        {"role": "user"},
        {"role": "user", "content": 5},
        {"role": "robot", "content": "hi"},
        {"type": "text", "text": "hi"},
        ANCHOR_Q,
    ]

    def value(depth: int = 0) -> Any:
        if depth < 2 and rng.random() < 0.3:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return rng.choice(atoms)

    fields = {
        "/v1/answer": ["question", "k", "history", "max_tokens", "temperature", "top_p"],
        "/v1/chat/completions": [
            "model",
            "messages",
            "stream",
            "max_tokens",
            "temperature",
            "n",
            "k",
            "stream_options",
            "top_p",
        ],
    }
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        for i in range(80):
            path = list(fields)[i % 2]
            body = {name: value() for name in fields[path] if rng.random() < 0.7}
            if path.endswith("completions") and rng.random() < 0.5:
                body["messages"] = [
                    {
                        "role": rng.choice(["user", "assistant", "system", "tool"]),
                        "content": rng.choice([ANCHOR_Q, "", None, [{"type": "text", "text": "a"}]]),
                    }
                    for _ in range(rng.randint(0, 3))
                ]
                body["stream"] = False
            response = client.post(
                path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
            )
            expected = (200, 400, 404) if path.endswith("completions") else (200, 422)
            assert response.status_code in expected, (body, response.text)


def test_load_script_starts_rag_serve_and_reports(
    index_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/load_api.py end to end: it starts `rag serve` in a subprocess and measures it briefly."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "load_api.py"
    spec = importlib.util.spec_from_file_location("load_api", script)
    assert spec and spec.loader
    load_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_api)
    with pytest.raises(SystemExit):  # never another host
        load_api.main(["--url", "http://192.0.2.1:8000", "--seconds", "1"])
    monkeypatch.delenv("RAG_API_KEY", raising=False)
    out = tmp_path / "report.json"
    status = load_api.main(
        [
            "--clients",
            "2",
            "--seconds",
            "1.5",
            "--set",
            f"index.path={index_path}",
            "--set",
            "embedding.model=hashing:64",
            "--set",
            "api.max_concurrency=1",
            "--catalog",
            str(index_path.parent / "catalog.jsonl"),
            "--json",
            str(out),
            "--server-log",
            str(tmp_path / "server.log"),
        ]
    )
    report = json.loads(out.read_text())
    assert status == 0 and report["errors"] == 0, report
    assert report["requests_ok"] > 0 and report["latency_ms"]["p50"] > 0
    assert report["rejected_429"] > 0  # 2 clients, 1 slot: the designed 429s, counted apart from errors
    assert report["server_rss_mb"]["peak"] > 10 and report["index_rows"] >= 300
