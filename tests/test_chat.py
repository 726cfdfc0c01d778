from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from rag.chat import run_repl
from rag.config import Config
from rag.generators.extractive import ExtractiveGenerator
from rag.pipeline import RAG
from rag.retrieval import Retriever
from tests.helpers import CATALOG, ArraySnapshot, StaticLive


@pytest.fixture(scope="module")
def rag_pipeline(minilm) -> RAG:  # type: ignore[no-untyped-def]
    config = Config()
    vectors = minilm.embed([r.title for r in CATALOG])
    return RAG(
        config,
        Retriever(config, StaticLive(ArraySnapshot(CATALOG, vectors)), minilm),
        ExtractiveGenerator(config),
    )


def drive(rag: RAG, lines: list[str | BaseException]) -> str:
    feed: Iterator[str | BaseException] = iter(lines)

    def fake_input(prompt: str) -> str:
        item = next(feed, EOFError())
        if isinstance(item, BaseException):
            raise item
        return item

    out = io.StringIO()
    assert run_repl(rag.config, input_fn=fake_input, output=out, rag=rag) == 0
    return out.getvalue()


def test_followup_stays_on_the_product(rag_pipeline: RAG) -> None:
    out = drive(rag_pipeline, ["what is City of Djinns about?", "who wrote it?", "/quit"])
    answers = [line for line in out.splitlines() if line.startswith("bot> ")]
    assert len(answers) == 2
    assert "City of Djinns" in answers[0]
    assert "Dalrymple" in answers[1]
    assert out.count("[1] City of Djinns: A Year in Delhi") == 2


def test_commands_help_k_sources_clear(rag_pipeline: RAG) -> None:
    out = drive(
        rag_pipeline, ["/help", "/k 2", "/k zero", "mogs kittens", "/sources", "/clear", "/nope", "/exit"]
    )
    assert "/sources" in out and "/clear" in out
    assert "k = 2" in out
    assert "/k takes a whole number" in out
    assert "[2] Mog the Forgetful Cat" in out  # /sources lists both retrieved rows ...
    assert out.count("[2] Mog the Forgetful Cat") == 1  # ... the answer itself only the ones it cites
    assert "(+1 more retrieved row, not cited: /sources lists them)" in out
    assert "[3] " not in out
    assert "Conversation cleared." in out
    assert "Unknown command /nope" in out


def test_ctrl_c_and_ctrl_d_are_handled(rag_pipeline: RAG) -> None:
    out = drive(rag_pipeline, [KeyboardInterrupt(), "mogs kittens"])  # then EOF (Ctrl-D)
    assert "^C" in out
    assert "Mog's Kittens" in out


def test_clear_forgets_the_product(rag_pipeline: RAG) -> None:
    out = drive(rag_pipeline, ["what is City of Djinns about?", "/clear", "who wrote it?"])
    answers = [line for line in out.splitlines() if line.startswith("bot> ")]
    assert "Dalrymple" not in answers[1]


def test_only_cited_sources_are_listed_after_an_answer(rag_pipeline: RAG) -> None:
    out = drive(rag_pipeline, ["what is City of Djinns about?", "/sources"])
    answer_part, sources_part = out.split("Sources:", 1)[1].split("Sources:", 1)
    assert "[1] City of Djinns" in answer_part and "[2] " not in answer_part
    assert "more retrieved rows, not cited" in answer_part
    assert "[1] City of Djinns" in sources_part and "[5] " in sources_part  # /sources: every retrieved row


def test_context_free_follow_up_asks_which_product(rag_pipeline: RAG) -> None:
    out = drive(
        rag_pipeline,
        ["what is it about?", "what is City of Djinns about?", "/clear", "who wrote it?", "is it for kids?"],
    )
    answers = [line for line in out.splitlines() if line.startswith("bot> ")]
    assert answers[0].startswith("bot> Which product do you mean?")
    assert "City of Djinns" in answers[1]
    assert answers[2].startswith("bot> Which product do you mean?") and "Dalrymple" not in answers[2]
    assert answers[3].startswith("bot> Which product do you mean?")
    assert "Sources: none (no product named yet)" in out
