"""`openai` backend: any OpenAI-compatible `/v1/chat/completions` server, over httpx.

    vllm serve TinyLlama/TinyLlama-1.1B-Chat-v1.0 --enable-lora --lora-modules catalog=runs/finetune/adapter
    rag ask "who wrote City of Djinns?" --config configs/vllm-lora.yaml    # generator.model: catalog

Works with vLLM, TGI, llama.cpp's server and Ollama (`http://127.0.0.1:11434/v1`). The API key is
read from the environment variable that `generator.api_key_env` names; it is sent as a Bearer
token and never logged or put in an error message. Connect errors, 429 and 5xx are retried with
exponential backoff (`generator.max_retries`); other 4xx are not, since repeating the same request
cannot fix them. Streaming uses server-sent events (`stream: true`, `data:` lines, `[DONE]`).
One client (a connection pool) is shared by every thread: `rag serve`'s workers and `generate_batch`
send their requests concurrently, and the server batches them (vLLM: continuous batching).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from rag.config import Config
from rag.generators.common import GeneratorError, Sampling, resolve_sampling
from rag.types import GenerationRequest

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0


class OpenAIServerError(GeneratorError):
    """The server could not be reached or answered with an error (the message says what to check)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OpenAIGenerator:
    """Generator protocol over an OpenAI-compatible HTTP server."""

    name = "openai"

    def __init__(self, config: Config, *, transport: httpx.BaseTransport | None = None):
        gen = config.generator
        if not gen.base_url:
            raise GeneratorError(
                "generator.base_url: not set; the openai backend needs the server's URL, "
                "e.g. --set generator.base_url=http://127.0.0.1:8000/v1"
            )
        if not gen.base_url.startswith(("http://", "https://")):
            raise GeneratorError(f"generator.base_url: {gen.base_url!r} must start with http:// or https://")
        if gen.timeout_s <= 0:
            raise GeneratorError(f"generator.timeout_s: must be > 0, got {gen.timeout_s}")
        if gen.max_retries < 0:
            raise GeneratorError(f"generator.max_retries: must be >= 0, got {gen.max_retries}")
        self.config = config
        self.base_url = gen.base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model: str | None = gen.model
        self.max_retries = int(gen.max_retries)
        self._api_key = os.environ.get(gen.api_key_env) or None if gen.api_key_env else None
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # Read timeout = generator.timeout_s between bytes; connect fails faster so retries start soon.
        timeout = httpx.Timeout(gen.timeout_s, connect=min(10.0, gen.timeout_s))
        self._client = httpx.Client(
            timeout=timeout, headers=headers, transport=transport, follow_redirects=False
        )
        self._sleep = time.sleep  # tests replace it to keep backoff instant

    # ------------------------------------------------------------------ helpers

    def _redact(self, text: str) -> str:
        """Remove the API key from any text (a server may echo the request headers back)."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(BACKOFF_MAX_S, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2**attempt)) * (0.75 + 0.5 * random.random())

    def _payload(self, request: GenerationRequest, sampling: Sampling, stream: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self._model_name(),
            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,  # 0 = greedy on vLLM, TGI, llama.cpp, Ollama
            "stream": stream,
        }
        if not sampling.greedy:
            payload["top_p"] = sampling.top_p
        # Not in the OpenAI spec but honoured by vLLM and llama.cpp; others ignore unknown fields.
        if sampling.repetition_penalty != 1.0:
            payload["repetition_penalty"] = sampling.repetition_penalty
        return payload

    def _model_name(self) -> str:
        """generator.model, or the first model the server lists at /models (vLLM, llama.cpp serve one)."""
        if self.model:
            return self.model
        response = self._send("GET", f"{self.base_url}/models", None, stream=False)
        try:
            data = response.json().get("data") or []
            self.model = str(data[0]["id"])
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise OpenAIServerError(
                f"GET {self.base_url}/models listed no model; set generator.model to the served model name "
                "(for vLLM with --lora-modules catalog=..., the adapter name: catalog)"
            ) from None
        finally:
            response.close()
        return self.model

    def _error(self, method: str, url: str, response: httpx.Response, attempts: int) -> OpenAIServerError:
        try:
            body = response.read().decode("utf-8", "replace")
        except httpx.HTTPError:
            body = ""
        detail = body.strip().replace("\n", " ")[:500]
        status = response.status_code
        if status in (401, 403):
            what = f"check the API key in the environment variable {self.config.generator.api_key_env}"
        elif status == 404:
            what = (
                "check generator.base_url (it usually ends in /v1) and generator.model "
                "(the served model or LoRA module name)"
            )
        elif status == 400 or status == 422:
            what = (
                "the server rejected the request; check generator.model and max_new_tokens against its limits"
            )
        elif status == 429:
            what = "the server is rate limiting; lower the request rate or raise generator.max_retries"
        else:
            what = "check the server's log"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return OpenAIServerError(
            self._redact(f"{method} {url} answered HTTP {status}{tries}: {detail or '(empty body)'}; {what}"),
            status=status,
        )

    def _send(self, method: str, url: str, payload: dict[str, Any] | None, *, stream: bool) -> httpx.Response:
        """Send with retries; returns a response with a 2xx status (open, when streaming)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                request = self._client.build_request(method, url, json=payload)
                response = self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if attempt <= self.max_retries:
                    delay = self._backoff(attempt - 1)
                    log.warning(
                        "%s %s: %s; retry %d/%d in %.1fs",
                        method,
                        url,
                        type(exc).__name__,
                        attempt,
                        self.max_retries,
                        delay,
                    )
                    self._sleep(delay)
                    continue
                raise OpenAIServerError(
                    f"{method} {url}: cannot connect after {attempt} attempts ({type(exc).__name__}); "
                    "is the server running and generator.base_url right?"
                ) from None
            except httpx.TimeoutException as exc:
                # Not retried: the server got the request and may still be generating.
                raise OpenAIServerError(
                    f"{method} {url}: no answer within generator.timeout_s={self.config.generator.timeout_s}s "
                    f"({type(exc).__name__}); raise generator.timeout_s or check the server's load"
                ) from None
            if response.status_code < 400:
                if not stream:
                    try:
                        response.read()
                    except httpx.TimeoutException:
                        response.close()
                        raise OpenAIServerError(
                            f"{method} {url}: the answer did not arrive within generator.timeout_s="
                            f"{self.config.generator.timeout_s}s; raise generator.timeout_s or check the server's load"
                        ) from None
                return response
            if response.status_code in RETRY_STATUSES and attempt <= self.max_retries:
                delay = self._backoff(attempt - 1, response.headers.get("retry-after"))
                log.warning(
                    "%s %s: HTTP %d; retry %d/%d in %.1fs",
                    method,
                    url,
                    response.status_code,
                    attempt,
                    self.max_retries,
                    delay,
                )
                response.close()
                self._sleep(delay)
                continue
            error = self._error(method, url, response, attempt)
            response.close()
            raise error

    # ------------------------------------------------------------------ protocol

    def generate(self, request: GenerationRequest) -> str:
        sampling = resolve_sampling(self.config.generator, request)
        response = self._send("POST", self.url, self._payload(request, sampling, stream=False), stream=False)
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise OpenAIServerError(
                f"POST {self.url}: the answer is not an OpenAI chat completion (no choices[0].message.content); "
                "is generator.base_url an OpenAI-compatible /v1 endpoint?"
            ) from None
        finally:
            response.close()
        return (content or "").strip()

    def generate_batch(
        self, requests: Sequence[GenerationRequest], batch_size: int | None = None
    ) -> list[str]:
        """Answer many requests with up to `batch_size` (generator.batch_size) in flight at once, in order.

        The server does the batching: vLLM's continuous batching (and TGI's, llama.cpp's with
        `--parallel`) decodes every request in flight together, so `rag eval answers` and `rag compare`
        send them concurrently instead of one after another. The first error is raised."""
        size = max(1, int(batch_size or self.config.generator.batch_size))
        if size == 1 or len(requests) <= 1:
            return [self.generate(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(size, len(requests)), thread_name_prefix="openai") as pool:
            return list(pool.map(self.generate, requests))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        sampling = resolve_sampling(self.config.generator, request)
        response = self._send("POST", self.url, self._payload(request, sampling, stream=True), stream=True)
        try:
            for piece in self._parse_sse(response):
                if piece:
                    yield piece
        except httpx.TimeoutException:
            raise OpenAIServerError(
                f"POST {self.url}: the stream stalled for more than generator.timeout_s="
                f"{self.config.generator.timeout_s}s; raise generator.timeout_s or check the server's load"
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise OpenAIServerError(
                f"POST {self.url}: the connection broke off mid-stream ({type(exc).__name__}); check the server's log"
            ) from None
        finally:
            response.close()

    def _parse_sse(self, response: httpx.Response) -> Iterator[str]:
        """Server-sent events: `data: {json}` lines, blank lines between events, `data: [DONE]` at the end."""
        for line in response.iter_lines():
            if not line or line.startswith(":") or not line.startswith("data:"):
                continue  # blank separator, comment/keep-alive, or another field (event:, id:)
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise OpenAIServerError(
                    f"POST {self.url}: a streamed event is not JSON ({self._redact(data[:200])!r}); "
                    "is generator.base_url an OpenAI-compatible /v1 endpoint?"
                ) from None
            if isinstance(event, dict) and event.get("error"):
                raise OpenAIServerError(
                    self._redact(
                        f"POST {self.url}: the server reported an error mid-stream: "
                        f"{json.dumps(event['error'])[:500]}"
                    )
                )
            for choice in (event.get("choices") or []) if isinstance(event, dict) else []:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    yield content

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIGenerator(base_url={self.base_url!r}, model={self.model!r})"
