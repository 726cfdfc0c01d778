"""Pydantic models of every request and response of the HTTP API (they make /openapi.json).

    python -c "from api.app import create_app; from rag.config import Config; import json; \
print(json.dumps(create_app(Config()).openapi()['paths'], indent=1)[:2000])"

Limits that depend on the configuration (question length, max_tokens, k, turns) are checked in the
routes against `api.*` and answered with 422 naming the limit; the descriptions here say which
setting holds each limit.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(field: str, text: str | None) -> None:
    """JSON may carry a lone surrogate (`"\\ud800"`), which is no character: the tokenizers fail on it."""
    if text is not None and (found := _SURROGATE.search(text)) is not None:
        raise ValueError(
            f"{field} holds a lone UTF-16 surrogate (U+{ord(found.group()):04X} at character "
            f"{found.start() + 1}), which is not a character; send valid Unicode text"
        )


# --------------------------------------------------------------------------- shared


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and what to do about it.")
    type: str = Field(description="A short machine-readable kind, e.g. invalid_request_error, rate_limited.")
    code: int = Field(description="The HTTP status code.")
    request_id: str = Field(
        description="Also in the X-Request-ID response header; quote it when reporting a problem."
    )
    errors: list[dict[str, Any]] | None = Field(default=None, description="Validation errors (422 only).")


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and what to do about it.")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, ...")
    param: str | None = Field(
        description="The request parameter at fault (e.g. max_tokens, messages.0.role), if any."
    )
    code: str | None = Field(
        description="A machine-readable code, e.g. model_not_found, unsupported_parameter."
    )
    request_id: str = Field(description="Also in the X-Request-ID response header.")


class OpenAIErrorResponse(BaseModel):
    """Errors of /v1/chat/completions and /v1/models, in OpenAI's shape (400 for invalid requests)."""

    error: OpenAIErrorDetail


class ErrorResponse(BaseModel):
    """Every error has this shape (the OpenAI clients read `error.message`)."""

    error: ErrorDetail


class Message(BaseModel):
    """One turn of a conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=100_000)

    @model_validator(mode="after")
    def _valid_unicode(self) -> Message:
        _check_unicode("content", self.content)
        return self


class SourceModel(BaseModel):
    """A catalog row that an answer is based on; cite numbers [1], [2] in the text follow this order."""

    uid: str = Field(description="The product id (ASIN) in the catalog.")
    title: str = Field(description="The product title; plain text (never HTML or markdown).")
    score: float = Field(description="Fused retrieval score; higher is better.")
    snippet: str = Field(
        description="The part of the description the answer used (may be empty); plain text."
    )


# --------------------------------------------------------------------------- /v1/answer


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(
        min_length=1,
        description="The question (at most api.max_question_chars characters, default 2000).",
        examples=["What is The Lighthouse Keeper's Daughter about?"],
    )
    k: int | None = Field(
        default=None, ge=1, description="Rows to retrieve (default retrieval.k; at most api.max_k)."
    )
    history: list[Message] = Field(
        default_factory=list,
        description="Earlier turns, oldest first, so follow-ups like 'who wrote it?' work.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Generation cap (at most api.max_tokens_cap)."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)


class AnswerResponse(BaseModel):
    question: str
    answer: str = Field(
        description="The answer text; plain text, never HTML or markdown (escape it to show it "
        "in a page). Citations [n] refer to `sources`."
    )
    sources: list[SourceModel]
    timings: dict[str, float] = Field(
        description="Seconds per stage (retrieve, generate, grounding, total, ...)."
    )
    found: bool = Field(description="False when retrieval found nothing relevant (then `sources` is empty).")
    grounded: bool = Field(description="True when every sentence of the answer is supported by a source.")
    unsupported_sentences: list[str]
    generator: str = Field(description="The generator backend that wrote the answer.")
    index_version: str | None = Field(description="The index version the answer was retrieved from.")
    request_id: str


# --------------------------------------------------------------------------- OpenAI shapes


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """An OpenAI chat message; system/developer messages are accepted and ignored (the RAG prompt has its own)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _valid_unicode(self) -> ChatMessage:
        parts = self.content if isinstance(self.content, list) else [self.content]
        for part in parts:
            _check_unicode("content", part.text if isinstance(part, TextPart) else part)
        _check_unicode("name", self.name)
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI chat completion request. The last user message is the question; earlier turns are history.

    Parameters this server cannot honour (`response_format` other than text, `tools`/`functions`,
    `logprobs`, `n` > 1) are answered 400 naming the parameter (api/openai_compat.py); sampling
    knobs it has no use for (presence_penalty, seed, user, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        default="amazontitles-rag",
        description="api.model_id or one of api.model_aliases (GET /v1/models lists them); others: 404.",
    )
    messages: list[ChatMessage] = Field(min_length=1, description="At most api.max_messages turns.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description='At most api.max_tokens_cap; the answer stops there with finish_reason "length".',
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Same as max_tokens (wins over it)."
    )
    stop: str | list[str] | None = Field(
        default=None,
        description="Up to 4 sequences; the answer ends before the "
        'first one (not included), finish_reason "stop".',
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, description="Only 1 (one choice is produced).")
    response_format: dict[str, Any] | None = Field(default=None, description='Only {"type": "text"}.')
    tools: list[dict[str, Any]] | None = Field(default=None, description="Not supported (400) unless empty.")
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description='Only "none" or "auto" without tools.'
    )
    functions: list[dict[str, Any]] | None = Field(
        default=None, description="Not supported (400) unless empty."
    )
    function_call: str | dict[str, Any] | None = Field(default=None, description='Only "none" or "auto".')
    logprobs: bool | None = Field(default=None, description="Only false: no log probabilities are produced.")
    top_logprobs: int | None = Field(default=None, description="Only 0 or null.")
    k: int | None = Field(default=None, ge=1, description="Extension: rows to retrieve (at most api.max_k).")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"
    logprobs: None = None


class Usage(BaseModel):
    """Tokens: the whole prompt (system prompt, retrieved rows, history, question) and the answer,
    counted with the generator's tokenizer, or for the extractive answerer with the stated one
    (`rag.tokenizer` names it; rag/tokens.py)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RagInfo(BaseModel):
    """Extension: how the answer was made."""

    found: bool
    grounded: bool
    unsupported_sentences: list[str]
    timings: dict[str, float]
    generator: str
    index_version: str | None
    tokenizer: str | None = Field(default=None, description="The tokenizer `usage` is counted with.")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    sources: list[SourceModel] = Field(description="Extension: the catalog rows the answer cites.")
    rag: RagInfo = Field(description="Extension: found, grounded, timings.")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event `data: {...}` of a streamed completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    sources: list[SourceModel] | None = Field(default=None, description="Extension: only in the final chunk.")
    rag: RagInfo | None = Field(default=None, description="Extension: only in the final chunk.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------- products, probes, admin


class Product(BaseModel):
    uid: str
    title: str = Field(description="The cleaned title; plain text (never HTML or markdown).")
    content: str = Field(description="The cleaned description (may be empty); plain text.")
    index_version: str | None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = Field(default=None, description="Why the service is not ready.")
    index_version: str | None = None
    rows: int | None = None
    embedding_model: str | None = None
    generator: str | None = None


class UpdateResponse(BaseModel):
    """The index update report (fields of `index.build.update_index`'s report) plus the new version."""

    model_config = ConfigDict(extra="allow")

    index_version: str | None = Field(description="The version now being served.")
    previous_version: str | None
    rows: int | None = Field(description="Rows in the served version.")
    seconds: float
    changed: bool = Field(
        default=True,
        description=(
            "False when the update had nothing to insert, change or delete: no version was written and "
            "index_version == previous_version (the report's summary starts with 'nothing to change')."
        ),
    )
    report: dict[str, Any] = Field(
        description="The update report: rows added, replaced, deleted, rejected, ..."
    )
