"""The `openai` backend over real HTTP against a small OpenAI-compatible server on loopback.

    .venv/bin/python -m pytest tests/test_generators_openai.py -q

The server (stdlib http.server in a thread) records every request and plays a per-test script:
plain completions, SSE streaming, 5xx/429 (retried), 4xx (not retried), slow answers (timeout).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rag.config import Config, GeneratorConfig
from rag.generators import make_generator
from rag.generators.common import GeneratorError
from rag.generators.openai_backend import OpenAIGenerator, OpenAIServerError
from rag.prompt import build_messages
from rag.types import GenerationRequest

pytestmark = pytest.mark.integration

SECRET = "sk-test-secret-0123456789"
KEY_ENV = "RAG_TEST_LLM_KEY"


class FakeServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[dict[str, Any]] = []  # one entry per request; the last one repeats
        # Set, a completion is held until this many are in flight at once (what vLLM batches); a
        # request that waits longer than the barrier's timeout gets HTTP 500 "not concurrent".
        self.barrier: threading.Barrier | None = None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _record(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                entry = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": body,
                }
                outer.requests.append(entry)
                return entry

            def _step(self) -> dict[str, Any]:
                index = min(len(outer.requests) - 1, len(outer.script) - 1)
                return outer.script[index] if outer.script else {}

            def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._record()
                self._json(200, {"object": "list", "data": [{"id": "catalog", "object": "model"}]})

            def do_POST(self) -> None:
                with outer.lock:
                    entry = self._record()
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                try:
                    self._complete(entry)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def _complete(self, entry: dict[str, Any]) -> None:
                step = self._step()
                if outer.barrier is not None:
                    try:
                        outer.barrier.wait()
                    except threading.BrokenBarrierError:
                        self._json(500, {"error": {"message": "not concurrent: the barrier timed out"}})
                        return
                if step.get("sleep"):
                    time.sleep(step["sleep"])
                status = step.get("status", 200)
                if status != 200:
                    body = step.get("body", {"error": {"message": "server exploded"}})
                    if step.get("echo_auth"):
                        body = {"error": {"message": f"bad key {self.headers.get('Authorization')}"}}
                    self._json(status, body, step.get("headers"))
                    return
                words = step.get("words", ["Hello", " from", " the", " server", " [1]."])
                if step.get("echo"):  # answer with what the pattern finds in the last message
                    last = ((entry["body"] or {}).get("messages") or [{}])[-1].get("content", "")
                    found = re.search(step["echo"], last)
                    words = [*words, " ", found.group(0) if found else "(no match)"]
                if not (entry["body"] or {}).get("stream"):
                    self._json(
                        200,
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": "".join(words)},
                                    "finish_reason": "stop",
                                }
                            ],
                        },
                    )
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
                events += [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
                events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
                self.wfile.write(b": keep-alive comment\n\n")
                for i, event in enumerate(events):
                    if step.get("error_after") == i:
                        self.wfile.write(b'data: {"error": {"message": "model crashed"}}\n\n')
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if step.get("stall"):
                        time.sleep(step["stall"])
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def make(base_url: str, **generator: Any) -> OpenAIGenerator:
    values = {
        "backend": "openai",
        "base_url": base_url,
        "model": "catalog",
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
        "max_retries": 2,
    }
    values.update(generator)
    g = make_generator(Config(generator=GeneratorConfig(**values)))
    assert isinstance(g, OpenAIGenerator)
    g._sleep = sleeps.append  # type: ignore[method-assign]
    return g


sleeps: list[float] = []


def request(**kw: Any) -> GenerationRequest:
    return GenerationRequest(
        question="who wrote it?", hits=[], messages=build_messages("who wrote it?", []), **kw
    )


def test_generate_sends_messages_sampling_and_the_key(server: FakeServer) -> None:
    g = make(server.base_url, temperature=0.0, max_new_tokens=50)
    assert g.generate(request()) == "Hello from the server [1]."
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = req["body"]
    assert body["model"] == "catalog" and body["stream"] is False and body["max_tokens"] == 50
    assert body["temperature"] == 0.0 and "top_p" not in body  # greedy
    assert body["messages"][0]["role"] == "system" and body["messages"][-1]["content"].endswith(
        "who wrote it?"
    )
    g.generate(request(temperature=0.7, top_p=0.9, max_new_tokens=10**6))
    body = server.requests[-1]["body"]
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["max_tokens"] == 4096  # capped


def test_stream_parses_server_sent_events(server: FakeServer) -> None:
    g = make(server.base_url)
    server.script = [{"words": ["A", " travel", " memoir", " [1]."]}]
    pieces = list(g.stream(request()))
    assert pieces == ["A", " travel", " memoir", " [1]."]
    assert server.requests[-1]["body"]["stream"] is True


def test_model_name_comes_from_the_server_when_not_configured(server: FakeServer) -> None:
    g = make(server.base_url, model=None)
    assert g.generate(request())
    assert [r["method"] for r in server.requests] == ["GET", "POST"]
    assert server.requests[1]["body"]["model"] == "catalog"


def test_5xx_is_retried_with_backoff_then_succeeds(server: FakeServer) -> None:
    sleeps.clear()
    server.script = [{"status": 503}, {"status": 500}, {}]
    g = make(server.base_url, max_retries=2)
    assert g.generate(request()) == "Hello from the server [1]."
    assert len(server.requests) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 1.1 / 1.5


def test_persistent_500_gives_a_clear_error_after_the_retries(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script = [{"status": 500, "echo_auth": True}]
    g = make(server.base_url, max_retries=2)
    with caplog.at_level(logging.DEBUG), pytest.raises(OpenAIServerError) as info:
        g.generate(request())
    message = str(info.value)
    assert len(server.requests) == 3
    assert info.value.status == 500
    assert f"POST {server.base_url}/chat/completions answered HTTP 500 after 3 attempts" in message
    assert "server's log" in message
    assert SECRET not in message and "***" in message  # the server echoed the key; it is redacted
    assert SECRET not in caplog.text and SECRET not in repr(g)


def test_429_honours_retry_after(server: FakeServer) -> None:
    sleeps.clear()
    server.script = [{"status": 429, "headers": {"Retry-After": "1.5"}}, {}]
    assert make(server.base_url).generate(request())
    assert sleeps == [1.5]


def test_4xx_is_not_retried_and_names_what_to_check(server: FakeServer) -> None:
    server.script = [{"status": 404, "body": {"error": {"message": "model 'nope' does not exist"}}}]
    g = make(server.base_url, model="nope")
    with pytest.raises(OpenAIServerError, match="HTTP 404.*does not exist.*generator.model"):
        g.generate(request())
    assert len(server.requests) == 1
    server.script = [{"status": 401, "echo_auth": True}]
    with pytest.raises(OpenAIServerError) as info:
        g.generate(request())
    assert KEY_ENV in str(info.value) and SECRET not in str(info.value)


def test_timeout_is_reported_and_not_retried(server: FakeServer) -> None:
    server.script = [{"sleep": 1.5}]
    g = make(server.base_url, timeout_s=0.3)
    started = time.perf_counter()
    with pytest.raises(OpenAIServerError, match=r"timeout_s=0.3"):
        g.generate(request())
    assert time.perf_counter() - started < 1.4
    assert len(server.requests) == 1


def test_stream_stall_is_a_timeout(server: FakeServer) -> None:
    server.script = [{"stall": 1.0}]
    g = make(server.base_url, timeout_s=0.3)
    with pytest.raises(OpenAIServerError, match="stalled"):
        list(g.stream(request()))


def test_stream_error_event_and_stream_5xx_retry(server: FakeServer) -> None:
    server.script = [{"error_after": 2}]
    g = make(server.base_url)
    received: list[str] = []
    with pytest.raises(OpenAIServerError, match="model crashed"):
        for piece in g.stream(request()):  # one by one: the pieces before the failure stay
            received.append(piece)  # noqa: PERF402
    assert received == ["Hello"]
    server.requests.clear()
    server.script = [{"status": 502}, {"words": ["ok", "!"]}]
    assert list(g.stream(request())) == ["ok", "!"]
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_explained() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps.clear()
    g = make(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(OpenAIServerError, match=r"cannot connect after 2 attempts.*generator.base_url"):
        g.generate(request())
    assert len(sleeps) == 1


def test_config_errors_name_the_key() -> None:
    with pytest.raises(GeneratorError, match=r"generator\.base_url: not set"):
        make_generator(Config(generator=GeneratorConfig(backend="openai")))
    with pytest.raises(GeneratorError, match=r"must start with http"):
        make_generator(Config(generator=GeneratorConfig(backend="openai", base_url="localhost:8000")))


def test_no_key_means_no_authorization_header(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    make(server.base_url).generate(request())
    assert "Authorization" not in server.requests[-1]["headers"]


def test_rag_answer_through_the_openai_backend(server: FakeServer, minilm) -> None:  # type: ignore[no-untyped-def]
    from rag.pipeline import RAG
    from rag.retrieval import Retriever
    from tests.helpers import CATALOG, ArraySnapshot, StaticLive

    generator = make(server.base_url)
    config = generator.config
    retriever = Retriever(
        config, StaticLive(ArraySnapshot(CATALOG, minilm.embed([r.title for r in CATALOG]))), minilm
    )
    rag = RAG(config, retriever, generator)
    server.script = [{"words": ["A travel memoir", " by William Dalrymple", " [1]."]}]
    stream = rag.answer("who wrote City of Djinns?", stream=True)
    assert "".join(stream) == "A travel memoir by William Dalrymple [1]."
    assert stream.answer is not None and stream.answer.grounded and stream.answer.generator == "openai"
    assert "City of Djinns" in server.requests[-1]["body"]["messages"][-1]["content"]  # the retrieved source


def test_concurrent_rag_serve_requests_reach_vllm_together(
    server: FakeServer, minilm, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """`rag serve` in front of vLLM (here: the stub) with a LoRA module: every request in flight at once.

    vLLM batches whatever requests are in flight (continuous batching), so the API must not queue them
    one by one: the stub holds each completion until all four have arrived (a barrier), and a request
    that waits in vain is answered 500, so the test fails if the API serialises generation. Two
    requests stream through /v1/chat/completions, two ask /v1/answer; each one's answer echoes its
    own question's tag, so none is crossed with another's.
    """
    import httpx

    from api.app import create_app
    from api.testing import LiveServer
    from rag.pipeline import RAG
    from rag.retrieval import Retriever
    from tests.helpers import CATALOG, ArraySnapshot, StaticLive

    monkeypatch.delenv("RAG_API_KEY", raising=False)  # the API itself without a key
    generator = make(server.base_url, max_retries=0)  # the LoRA module name of `--lora-modules catalog=...`
    config = generator.config
    retriever = Retriever(
        config, StaticLive(ArraySnapshot(CATALOG, minilm.embed([r.title for r in CATALOG]))), minilm
    )
    n = 4
    server.barrier = threading.Barrier(n, timeout=15)
    server.script = [{"words": ["A travel memoir by William Dalrymple [1]."], "echo": r"tag-\d+"}]
    results: dict[int, tuple[int, str]] = {}

    def ask(i: int, url: str) -> None:
        question = f"who wrote City of Djinns? tag-{i}"
        if i % 2:
            body = {"question": question}
            response = httpx.post(f"{url}/v1/answer", json=body, timeout=30)
            results[i] = (response.status_code, response.json().get("answer", response.text))
            return
        body = {
            "model": "amazontitles-rag",
            "stream": True,
            "messages": [{"role": "user", "content": question}],
        }
        pieces: list[str] = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    pieces.extend(
                        (choice.get("delta") or {}).get("content") or ""
                        for choice in json.loads(line[5:]).get("choices") or []
                    )
            results[i] = (response.status_code, "".join(pieces))

    with LiveServer(create_app(config, RAG(config, retriever, generator))) as api:
        api.wait_ready()
        threads = [threading.Thread(target=ask, args=(i, api.url)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert sorted(results) == list(range(n)), results
    for i, (status, text) in results.items():
        assert status == 200, (i, text)
        assert text.startswith("A travel memoir by William Dalrymple [1].") and text.endswith(f"tag-{i}"), (
            i,
            text,
        )
    assert server.peak == n  # all four were at the server at once: one batch for vLLM
    posts = [r for r in server.requests if r["method"] == "POST"]
    assert len(posts) == n
    assert all(r["path"] == "/v1/chat/completions" and r["body"]["model"] == "catalog" for r in posts)
    assert sorted(r["body"]["stream"] for r in posts) == [False, False, True, True]


def test_generate_batch_sends_the_batch_concurrently_in_order(server: FakeServer) -> None:
    """`rag eval answers` / `rag compare` through vLLM: a batch's requests are in flight together."""
    g = make(server.base_url, max_retries=0, batch_size=3)
    server.barrier = threading.Barrier(3, timeout=15)  # a request that waits in vain: HTTP 500
    server.script = [{"words": ["Answer"], "echo": r"q\d+"}]
    requests = [
        GenerationRequest(question=f"q{i}", hits=[], messages=build_messages(f"about q{i}?", []))
        for i in range(6)
    ]
    assert g.generate_batch(requests) == [f"Answer q{i}" for i in range(6)]
    assert server.peak == 3 and len(server.requests) == 6
    assert all(r["body"]["model"] == "catalog" and r["body"]["stream"] is False for r in server.requests)
    server.barrier, server.peak = None, 0
    server.requests.clear()
    assert g.generate_batch(requests[:2], batch_size=1) == ["Answer q0", "Answer q1"]
    assert server.peak == 1 and len(server.requests) == 2  # batch_size 1: one at a time
