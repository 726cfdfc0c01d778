"""The OpenAI-compatible routes: POST /v1/chat/completions (streaming too), GET /v1/models[/{model}].

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
    client.chat.completions.create(model="amazontitles-rag", messages=[{"role": "user", "content": "..."}])

The wire format follows OpenAI's, so its SDK and LangChain's ChatOpenAI behave as against OpenAI:

- errors are `{"error": {"message", "type", "param", "code", "request_id"}}` with a string (or
  null) `code`; invalid requests are 400 (not FastAPI's 422), an unknown model 404
  `model_not_found`. `OpenAIErrorShapeMiddleware` reshapes the errors other layers write on these
  paths (401 from the key check, 413, 500, validation errors), so every error here has that shape;
- `max_tokens` / `max_completion_tokens` cap the answer (finish_reason "length"), `stop` ends it
  before the first stop sequence; `response_format` other than text, `tools`, `functions`,
  `logprobs` and `n` > 1 are refused with a 400 naming the parameter;
- `usage` counts tokens of the whole prompt and of the answer with the generator's tokenizer (the
  extractive answerer: the stated tokenizer of rag/tokens.py, named in `rag.tokenizer`).

The routes are the `router(state)` that api.app.create_app includes; `install(app)` adds the error
shape. A streamed answer is a `CompletionStream` (its steps are named there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import schemas as s
from api.middleware import request_id_of
from api.state import (
    DOCUMENTED_AUTH,
    ApiError,
    ApiState,
    Slot,
    error_responses,
    rag_info,
    record_stages,
    sources,
    version_of,
)

log = logging.getLogger("api")

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
MAX_STOP_SEQUENCES = 4

# default `code` by status for errors that carry none (OpenAI's codes where it has one)
_CODES = {
    400: "invalid_value",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}
# pydantic error type -> OpenAI-style code
_VALIDATION_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "json_invalid": "invalid_json",
    "model_attributes_type": "invalid_type",
}


def is_openai_path(path: str) -> bool:
    return path in (CHAT_PATH, MODELS_PATH) or path.startswith(MODELS_PATH + "/")


class OpenAIError(ApiError):
    """An error of the OpenAI routes: status, message, the parameter at fault and a string code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            status,
            message,
            kind=kind or ("invalid_request_error" if status in (400, 404) else None),
            headers=headers,
        )
        self.param = param
        self.code = code or _CODES.get(status)


def error_payload(
    message: str, kind: str, param: str | None, code: str | None, request_id: str
) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": kind, "param": param, "code": code, "request_id": request_id}
    }


def _bad(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _param_of(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def reshape_error(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A project error body (`code` = the HTTP status, `errors` for validation) in OpenAI's shape;
    422 becomes 400. Bodies already in the shape pass unchanged."""
    error = body.get("error")
    if not isinstance(error, dict):
        return status, body
    if status == 422:
        status = 400
    errors = error.pop("errors", None) or []
    if "param" not in error:
        error["param"] = _param_of(errors[0].get("loc", ())) if errors else None
    if not isinstance(error.get("code"), str):
        error["code"] = (
            _VALIDATION_CODES.get(errors[0].get("type", ""), "invalid_value")
            if errors
            else _CODES.get(status)
        )
    if status == 400:
        error["type"] = "invalid_request_error"
    return status, {"error": {k: error.get(k) for k in ("message", "type", "param", "code", "request_id")}}


class OpenAIErrorShapeMiddleware:
    """Outermost on the app: JSON errors on the OpenAI paths get OpenAI's shape and status (400 for 422)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not is_openai_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def reshaping_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(
                    b"application/json"
                ):
                    held["start"] = message  # wait for the body
                    return
                await send(message)
                return
            if message["type"] == "http.response.body" and "start" in held:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                start = held.pop("start")
                raw = b"".join(chunks)
                status = start["status"]
                try:
                    status, payload = reshape_error(status, json.loads(raw))
                    raw = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                except ValueError:  # not JSON after all: pass it on untouched
                    pass
                out_headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                out_headers.append((b"content-length", str(len(raw)).encode()))
                await send({**start, "status": status, "headers": out_headers})
                await send({"type": "http.response.body", "body": raw})
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)


def install(app: FastAPI) -> None:
    """The error handler and the reshaping middleware (call after the other middlewares are added)."""

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        payload = error_payload(str(exc.detail), exc.kind, exc.param, exc.code, request_id_of(request.scope))
        return JSONResponse(payload, status_code=exc.status_code, headers=dict(exc.headers or {}))

    app.add_middleware(OpenAIErrorShapeMiddleware)


# --------------------------------------------------------------------------- request checks


def served_models(state: ApiState) -> list[str]:
    api = state.config.api
    return list(dict.fromkeys([api.model_id, *api.model_aliases]))


def check_model(state: ApiState, model: str, hint: str = "") -> None:
    """404 `model_not_found` for a model this server does not serve."""
    if model not in served_models(state):
        raise OpenAIError(
            404,
            f"The model {model!r} does not exist; this server serves "
            f"{', '.join(map(repr, served_models(state)))}{hint}",
            param="model",
            code="model_not_found",
        )


def _message_text(message: s.ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        return ""
    return "".join(part.text for part in message.content)


def split_chat(messages: Sequence[s.ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The last user message is the question; earlier user/assistant turns are the history."""
    turns = [(m.role, _message_text(m)) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user":
        raise _bad("the last user/assistant message must be a user message: it is the question", "messages")
    history = [{"role": role, "content": text} for role, text in turns[:-1]]
    return turns[-1][1], history


def check_supported(body: s.ChatCompletionRequest) -> None:
    """400 for what this server cannot do, naming the parameter (rather than ignoring it)."""
    fmt = body.response_format
    if fmt is not None and fmt.get("type", "text") != "text":
        raise _bad(
            f"response_format {fmt.get('type')!r} is not supported: answers are plain text with [n] "
            'citations of the catalog rows in `sources`; leave response_format out or use {"type": "text"}',
            "response_format",
            "unsupported_value",
        )
    if body.tools:
        raise _bad(
            "tools are not supported: this model answers from the catalog and calls no functions",
            "tools",
            "unsupported_parameter",
        )
    if body.functions:
        raise _bad(
            "functions are not supported: this model answers from the catalog and calls no functions",
            "functions",
            "unsupported_parameter",
        )
    for name, value in (("tool_choice", body.tool_choice), ("function_call", body.function_call)):
        if value is not None and value not in ("none", "auto"):
            raise _bad(
                f"{name} {value!r} is not supported: there are no tools to call", name, "unsupported_value"
            )
    if body.logprobs:
        raise _bad(
            "logprobs are not supported: the answers are not sampled token by token from one model "
            "(the default answerer extracts catalog sentences)",
            "logprobs",
            "unsupported_parameter",
        )
    if body.top_logprobs:
        raise _bad(
            "top_logprobs is not supported (no logprobs are produced)",
            "top_logprobs",
            "unsupported_parameter",
        )
    if body.n is not None and body.n != 1:
        raise _bad(
            f"n={body.n} is not supported: one choice is produced per request", "n", "unsupported_value"
        )


def stop_sequences(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _bad(f"stop has {len(stops)} sequences; at most {MAX_STOP_SEQUENCES} are allowed", "stop")
    if any(not x for x in stops):
        raise _bad("stop sequences must not be empty strings", "stop")
    return stops


def check_limits(state: ApiState, body: s.ChatCompletionRequest, question: str) -> int | None:
    """The api.* limits as 400s naming the parameter; returns the max_tokens to honour."""
    api = state.config.api
    if len(body.messages) > api.max_messages:
        raise _bad(
            f"{len(body.messages)} messages is over the limit api.max_messages={api.max_messages}", "messages"
        )
    if len(question) > api.max_question_chars:
        raise _bad(
            f"the question is {len(question)} characters; the limit is "
            f"api.max_question_chars={api.max_question_chars}",
            "messages",
        )
    if not question.strip():
        raise _bad("the question is empty: ask something about a product", "messages")
    if body.k is not None and body.k > api.max_k:
        raise _bad(f"k={body.k} is over the limit api.max_k={api.max_k}", "k")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value > api.max_tokens_cap:
            raise _bad(f"{name}={value} is over the limit api.max_tokens_cap={api.max_tokens_cap}", name)
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens


# --------------------------------------------------------------------------- stop sequences


class StopCutter:
    """Finds stop sequences across streamed pieces: holds back the last len(longest stop) - 1
    characters until it knows they do not begin a stop sequence."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.hold = max((len(x) for x in self.stops), default=1) - 1
        self.buffer = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text that is safe to send now, whether a stop sequence was reached)."""
        self.buffer += piece
        found = [i for i in (self.buffer.find(x) for x in self.stops) if i != -1]
        if found:
            out, self.buffer = self.buffer[: min(found)], ""
            return out, True
        keep = min(self.hold, len(self.buffer))
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


def cut_at_stops(stream: Any, stops: Sequence[str]) -> Iterator[str]:
    """The pieces of an AnswerStream up to the first stop sequence; there the stream is stopped
    (its generator closed) and its Answer holds the text sent."""
    if not stops:
        yield from stream
        return
    cutter = StopCutter(stops)
    sent: list[str] = []
    for piece in stream:
        safe, stopped = cutter.feed(piece)
        if safe:
            sent.append(safe)
            yield safe
        if stopped:
            stream.stop("".join(sent))
            return
    rest = cutter.flush()
    if rest:
        yield rest


# --------------------------------------------------------------------------- answers


def _finish_reason(answer: Any) -> Literal["stop", "length"]:
    return "length" if answer.finish_reason == "length" else "stop"


def _usage(state: ApiState, answer: Any) -> tuple[s.Usage, str]:
    from rag.tokens import usage

    prompt, completion, tokenizer = usage(state.require_rag().generator, answer)
    return s.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    ), tokenizer


def _rag_extension(answer: Any, version: str | None, tokenizer: str) -> s.RagInfo:
    info = rag_info(answer, version)
    info.tokenizer = tokenizer
    return info


@dataclasses.dataclass
class Completion:
    """One checked chat-completion request: the question, its history and what shapes the answer."""

    body: s.ChatCompletionRequest
    question: str
    history: list[dict[str, str]]
    max_tokens: int | None
    stops: list[str]
    request: Request
    id: str = dataclasses.field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @classmethod
    def check(cls, state: ApiState, body: s.ChatCompletionRequest, request: Request) -> Completion:
        """The request's checks in order (model, supported parameters, the question, limits, stop)."""
        check_model(state, body.model, " (GET /v1/models lists them)")
        check_supported(body)
        question, history = split_chat(body.messages)
        max_tokens = check_limits(state, body, question)
        stops = stop_sequences(body.stop)
        return cls(body, question, history, max_tokens, stops, request)

    @property
    def include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    def answer_options(self, snapshot: Any) -> dict[str, Any]:
        """The keyword arguments of `RAG.answer` for this request, over one index snapshot."""
        return {
            "k": self.body.k,
            "history": self.history,
            "max_new_tokens": self.max_tokens,
            "temperature": self.body.temperature,
            "top_p": self.body.top_p,
            "snapshot": snapshot,
        }


def _answer_blocking(state: ApiState, ask: Completion) -> tuple[Any, str | None, s.Usage, str]:
    rag = state.require_rag()
    snapshot = rag.retriever.snapshot  # one version for the answer and the label it reports
    version = version_of(snapshot)
    options = ask.answer_options(snapshot)
    if ask.stops:  # through the stream, so the generator stops at the stop sequence
        stream = rag.answer(ask.question, stream=True, **options)
        for _ in cut_at_stops(stream, ask.stops):
            pass
        answer = stream.answer
    else:
        answer = rag.answer(ask.question, **options)
    usage, tokenizer = _usage(state, answer)
    return answer, version, usage, tokenizer


async def _complete(state: ApiState, ask: Completion) -> s.ChatCompletion:
    """The whole answer as one chat.completion."""
    state.require_rag()
    slot = await state.acquire_slot()
    try:
        answer, version, usage, tokenizer = await state.run(
            slot, lambda: _answer_blocking(state, ask), state.config.api.request_timeout_s
        )
    except ValueError as exc:  # the pipeline's own checks on the question
        raise _bad(str(exc), "messages") from None
    finally:
        slot.release()
    record_stages(state, answer)
    return s.ChatCompletion(
        id=ask.id,
        created=ask.created,
        model=state.config.api.model_id,
        choices=[
            s.Choice(message=s.AssistantMessage(content=answer.text), finish_reason=_finish_reason(answer))
        ],
        usage=usage,
        sources=sources(answer),
        rag=_rag_extension(answer, version, tokenizer),
    )


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented errors of these routes, in OpenAI's shape (400 for invalid requests)."""
    documented = error_responses(*[c for c in codes if c != 400])
    for value in documented.values():
        value["model"] = s.OpenAIErrorResponse
    if 400 in codes:
        documented[400] = {
            "model": s.OpenAIErrorResponse,
            "description": (
                "Invalid request: `param` names the field (a missing or wrong value, a limit, or an unsupported "
                "parameter: response_format other than text, tools, functions, logprobs, n > 1)."
            ),
        }
    return documented


_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat.completion (JSON), or with `stream: true` server-sent events: "
        "`data: <chat.completion.chunk JSON>` lines ending with `data: [DONE]`; the "
        "final chunk carries `sources` and `rag`.",
        "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}},
    },
}


def router(state: ApiState) -> APIRouter:
    """GET /v1/models, GET /v1/models/{model}, POST /v1/chat/completions."""
    routes = APIRouter()

    def card(model_id: str) -> s.ModelCard:
        return s.ModelCard(id=model_id, created=state.model_created, owned_by="amazontitles-rag")

    @routes.get(
        MODELS_PATH,
        response_model=s.ModelList,
        tags=["openai"],
        dependencies=DOCUMENTED_AUTH,
        summary="The models this server answers to: api.model_id and its aliases (OpenAI shape)",
        responses=_responses(401),
    )
    async def models() -> s.ModelList:
        return s.ModelList(data=[card(m) for m in served_models(state)])

    @routes.get(
        MODELS_PATH + "/{model}",
        response_model=s.ModelCard,
        tags=["openai"],
        dependencies=DOCUMENTED_AUTH,
        summary="One model (OpenAI shape)",
        responses=_responses(401, 404),
    )
    async def model(model: str) -> s.ModelCard:
        check_model(state, model)
        return card(model)

    @routes.post(
        CHAT_PATH,
        response_model=s.ChatCompletion,
        tags=["openai"],
        dependencies=DOCUMENTED_AUTH,
        summary="OpenAI-compatible chat completion: the last user message is the question",
        responses={**_CHAT_RESPONSES, **_responses(400, 401, 404, 413, 429, 500, 503, 504)},
    )
    async def chat_completions(body: s.ChatCompletionRequest, request: Request) -> Any:
        ask = Completion.check(state, body, request)
        if body.stream:
            return await CompletionStream.start(state, ask)
        return await _complete(state, ask)

    return routes


# --------------------------------------------------------------------------- streaming


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


_END = object()


class _Failure:
    """An exception raised in the streaming worker thread, carried to the event loop."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _chunk_json(chunk: s.ChatCompletionChunk) -> dict[str, Any]:
    """A chunk as OpenAI writes it: `finish_reason: null` kept, unset delta fields and extensions left out."""
    data = chunk.model_dump()
    for key in ("usage", "sources", "rag"):
        if data.get(key) is None:
            data.pop(key, None)
    for choice in data["choices"]:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return data


class CompletionStream:
    """One streamed chat completion, in named steps:

    1. `start`: take a concurrency slot, start the answer in the answer pool and wait for its first
       piece, so every error up to there still gets a proper status;
    2. `pump` (one worker thread) drains the rest of the answer into a queue, no thread hop per piece;
    3. `events` sends them as server-sent `chat.completion.chunk`s, then the final chunk with
       `sources` and `rag` (and usage when asked), `[DONE]`; an error mid-stream is sent as an event;
    4. `close` frees the slot however the response ends.
    """

    def __init__(self, state: ApiState, ask: Completion, slot: Slot, deadline: float) -> None:
        self.state, self.ask, self.slot, self.deadline = state, ask, slot, deadline
        self.model_id = state.config.api.model_id  # an alias asked for is answered as the model it names
        self.stop = threading.Event()
        self.stream: Any = None
        self.pieces: Iterator[str] = iter(())
        self.first: Any = _END
        self.version: str | None = None
        self.loop = asyncio.get_running_loop()  # built in `start`, on the event loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    @classmethod
    async def start(cls, state: ApiState, ask: Completion) -> StreamingResponse:
        """Start the answer and wait for its first piece (errors up to here get a proper status), then stream."""
        state.require_rag()
        slot = await state.acquire_slot()
        completion = cls(state, ask, slot, time.monotonic() + state.config.api.request_timeout_s)
        try:
            await state.run(slot, completion._first_piece, completion.deadline - time.monotonic())
        except ValueError as exc:
            slot.release()
            raise _bad(str(exc), "messages") from None
        except BaseException:
            slot.release()
            raise
        return _ClosingStreamingResponse(
            completion.events(),
            on_close=completion.close,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _first_piece(self) -> None:
        """In the answer pool: retrieve, start generating, and take the first piece."""
        rag = self.state.require_rag()
        snapshot = rag.retriever.snapshot
        self.version = version_of(snapshot)
        self.stream = rag.answer(self.ask.question, stream=True, **self.ask.answer_options(snapshot))
        self.pieces = cut_at_stops(self.stream, self.ask.stops)
        self.first = next(self.pieces, _END)

    # ---------------------------------------------------------------- the worker thread

    def _put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.stop.set()

    def pump(self) -> None:
        """Drain the generator in ONE worker thread (no thread hop per piece); pieces go to the queue."""
        try:
            for piece in self.pieces:
                if self.stop.is_set():  # the client went away: stop pulling pieces
                    return
                self._put(piece)
            self._put(_END)
        except BaseException as exc:  # handed to the event loop, which logs it and tells the client
            self._put(_Failure(exc))

    # ---------------------------------------------------------------- the event loop

    async def next_pieces(self) -> Any:
        """The next piece(s) joined (coalescing what is queued already), _END, or a _Failure; 504 at the deadline."""
        try:
            item = await asyncio.wait_for(
                self.queue.get(), timeout=max(self.deadline - time.monotonic(), 0.001)
            )
        except asyncio.TimeoutError:
            raise ApiError(
                504,
                f"the answer took longer than api.request_timeout_s={self.state.config.api.request_timeout_s} s",
            ) from None
        joined = []
        while isinstance(item, str):
            joined.append(item)
            if self.queue.empty():
                break
            item = self.queue.get_nowait()
        if joined and not isinstance(item, str):
            self.queue.put_nowait(item)  # the end marker goes back for the next call
        return "".join(joined) if joined else item

    def chunk(
        self, delta: dict[str, Any], finish: Literal["stop", "length"] | None = None, **extra: Any
    ) -> bytes:
        payload = s.ChatCompletionChunk(
            id=self.ask.id,
            created=self.ask.created,
            model=self.model_id,
            choices=[s.ChunkChoice(delta=s.Delta(**delta), finish_reason=finish)],
            **extra,
        )
        return _sse(_chunk_json(payload))

    def error_event(self, message: str, kind: str, code: str) -> bytes:
        return _sse(error_payload(message, kind, None, code, request_id_of(self.ask.request.scope)))

    async def _content(self) -> AsyncIterator[bytes]:
        """The answer's pieces as chunks; a 504 mid-stream becomes an error event (the status is sent)."""
        yield self.chunk({"content": self.first})
        self.slot.track(self.loop.run_in_executor(self.state.executor, self.pump))
        while True:
            try:
                piece = await self.next_pieces()
            except ApiError as exc:  # 504 mid-stream: the status is sent already, so say it in the stream
                self.stop.set()
                yield self.error_event(str(exc.detail), exc.kind, "timeout")
                raise _TimedOut from None
            if piece is _END:
                return
            if isinstance(piece, _Failure):
                raise piece.error
            yield self.chunk({"content": piece})

    async def _final(self) -> AsyncIterator[bytes]:
        """The last chunk with the finish reason, `sources` and `rag`; then usage when asked for."""
        answer = self.stream.answer
        record_stages(self.state, answer)
        usage, tokenizer = await run_in_threadpool(_usage, self.state, answer)
        yield self.chunk(
            {},
            _finish_reason(answer),
            sources=sources(answer),
            rag=_rag_extension(answer, self.version, tokenizer),
        )
        if self.ask.include_usage:  # OpenAI sends usage in an extra chunk with no choices
            yield _sse(
                _chunk_json(
                    s.ChatCompletionChunk(
                        id=self.ask.id, created=self.ask.created, model=self.model_id, choices=[], usage=usage
                    )
                )
            )

    async def events(self) -> AsyncIterator[bytes]:
        request_id = request_id_of(self.ask.request.scope)
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            if self.first is not _END:
                async for event in self._content():
                    yield event
            async for event in self._final():
                yield event
            yield _sse("[DONE]")
        except _TimedOut:
            yield _sse("[DONE]")
        except Exception:
            log.exception("request %s: streaming failed", request_id)
            yield self.error_event(
                "internal error; the server log has the details under request id " + request_id,
                "internal_error",
                "internal_error",
            )
            yield _sse("[DONE]")
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        self.slot.release()


class _TimedOut(Exception):
    """The deadline passed mid-stream; the error event is sent already, `[DONE]` follows."""


class _ClosingStreamingResponse(StreamingResponse):
    """Runs `on_close` however the response ends, even when the client left before the body started
    (then the body generator never runs, and its `finally` would not free the concurrency slot)."""

    def __init__(self, content: Any, *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
