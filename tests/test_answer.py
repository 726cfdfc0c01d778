from __future__ import annotations

import pytest

from rag.config import Config
from rag.generators.extractive import ExtractiveGenerator, detect_intent
from rag.pipeline import RAG
from rag.retrieval import Retriever
from tests.helpers import CATALOG, ArraySnapshot, StaticLive


@pytest.fixture(scope="module")
def rag_pipeline(minilm) -> RAG:  # type: ignore[no-untyped-def]
    config = Config()
    vectors = minilm.embed([r.title for r in CATALOG])
    retriever = Retriever(config, StaticLive(ArraySnapshot(CATALOG, vectors)), minilm)
    return RAG(config, retriever, ExtractiveGenerator(config))


def test_answer_cites_the_right_source_and_uses_its_description(rag_pipeline: RAG) -> None:
    answer = rag_pipeline.answer("who wrote City of Djinns?")
    assert answer.found
    assert answer.sources[0].uid == "B001"
    assert "Dalrymple" in answer.text
    assert "[1]" in answer.text
    assert answer.grounded
    assert answer.sources[0].snippet and answer.sources[0].snippet in answer.text
    assert {"retrieve", "generate", "total"} <= set(answer.timings)


def test_intent_picks_the_matching_sentence(rag_pipeline: RAG) -> None:
    about = rag_pipeline.answer("What is The Lighthouse Keeper's Daughter about?")
    assert "island lighthouse" in about.text
    audience = rag_pipeline.answer("who is The Lighthouse Keeper's Daughter for?")
    assert "adult readers" in audience.text
    assert detect_intent("quem escreveu o livro?") == "author"
    assert detect_intent("is it for kids?") == "audience"


def test_row_without_content_is_answered_plainly(rag_pipeline: RAG) -> None:
    answer = rag_pipeline.answer("tell me about the Stainless Steel Garlic Press")
    assert answer.sources[0].uid == "B005"
    assert "no description" in answer.text


def test_nothing_relevant_is_said_plainly(rag_pipeline: RAG) -> None:
    answer = rag_pipeline.answer("quantum chromodynamics lattice gauge simulation GPU cluster")
    assert not answer.found
    assert answer.sources == []
    assert "could not find" in answer.text


def test_stream_yields_pieces_that_make_the_answer(rag_pipeline: RAG) -> None:
    stream = rag_pipeline.answer("what is Mog's Kittens about?", stream=True)
    pieces = list(stream)
    assert len(pieces) > 3
    assert stream.answer is not None
    assert "".join(pieces).strip() == stream.answer.text
    assert stream.answer.sources[0].uid == "B002"


def test_empty_question_is_rejected(rag_pipeline: RAG) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        rag_pipeline.answer("   ")
