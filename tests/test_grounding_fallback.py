"""generator.grounding_fallback: an LLM answer the grounding check flags is trimmed or replaced by
the extractive answer, for plain and streamed answers; a grounded answer is left alone.

    .venv/bin/python -m pytest tests/test_grounding_fallback.py -q
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rag.config import load_config
from rag.pipeline import RAG
from rag.types import CatalogRow, GenerationRequest, Hit

ROW = CatalogRow(
    "A1",
    "The Salt Road",
    "A novel by Marta Quillon about two sisters crossing the desert in 1920. "
    "It won the Carnegie Medal for its portrait of the caravans.",
)


class Retriever:
    snapshot = None

    def search(self, question: str, k: int | None = None, history=(), snapshot=None) -> list[Hit]:  # type: ignore[no-untyped-def]
        return [Hit(row=ROW, score=0.9)]


class Canned:
    """An 'LLM' that says what the test wants."""

    name = "canned"

    def __init__(self, text: str) -> None:
        self.text = text

    def generate(self, request: GenerationRequest) -> str:
        request.finish_reason = "stop"
        return self.text

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        request.finish_reason = "stop"
        yield from self.text.split(" ")[:1]
        yield " " + " ".join(self.text.split(" ")[1:])


GOOD = "The Salt Road is a novel by Marta Quillon [1]."
INVENTED = "Penguin printed twelve million copies of the cookbook edition in Tokyo [1]."


def _rag(text: str, mode: str) -> RAG:
    config = load_config(None, [f"generator.grounding_fallback={mode}", "retrieval.min_name_coverage=0"])
    return RAG(config, Retriever(), Canned(text))


@pytest.mark.parametrize("mode", ["trim", "extractive"])
def test_a_grounded_answer_is_left_alone(mode: str) -> None:
    answer = _rag(GOOD, mode).answer("Who wrote The Salt Road?")
    assert answer.text == GOOD and answer.fallback is None and answer.llm_text is None


def test_trim_drops_the_unsupported_sentence_only() -> None:
    answer = _rag(f"{GOOD} {INVENTED}", "trim").answer("Who wrote The Salt Road?")
    assert answer.text == GOOD
    assert answer.fallback == "trim" and INVENTED in (answer.llm_text or "")
    assert answer.grounded


@pytest.mark.parametrize("mode", ["trim", "extractive"])
def test_nothing_supported_or_a_wrong_refusal_falls_back_to_the_extractive_answer(mode: str) -> None:
    for text in (INVENTED, "The sources do not describe The Salt Road."):
        answer = _rag(text, mode).answer("Who wrote The Salt Road?")
        assert answer.fallback == "extractive", text
        assert answer.text.startswith("The Salt Road [1]:") and "Marta Quillon" in answer.text
        assert answer.grounded and answer.llm_text == text


def test_without_a_fallback_the_flag_stays_on_the_answer() -> None:
    answer = _rag(INVENTED, "none").answer("Who wrote The Salt Road?")
    assert answer.text == INVENTED and not answer.grounded and answer.fallback is None


def test_a_streamed_answer_arrives_checked() -> None:
    stream = _rag(f"{GOOD} {INVENTED}", "trim").answer("Who wrote The Salt Road?", stream=True)
    pieces = list(stream)
    assert "".join(pieces) == GOOD
    assert stream.answer is not None and stream.answer.fallback == "trim" and stream.answer.text == GOOD
    plain = list(_rag(GOOD, "none").answer("Who wrote The Salt Road?", stream=True))
    assert len(plain) == 2  # without a fallback the pieces stream as they come


def test_an_answer_of_the_wrong_type_falls_back() -> None:
    from rag.grounding import missing_answer_type

    assert missing_answer_type("How many pages does it have?", "It is a novel about sisters [1].") == "count"
    assert missing_answer_type("How many pages does it have?", "It has 312 pages [1].") is None
    assert missing_answer_type("Em que ano foi publicado?", "Um romance [1].") == "year"
    assert missing_answer_type("In what year was it published?", "First published in 1987 [1].") is None
    assert missing_answer_type("Who wrote it?", "A novel [1].") is None  # other questions are not judged
    answer = _rag("The Salt Road is a novel by Marta Quillon [1].", "extractive").answer(
        "When was The Salt Road set?"
    )
    assert answer.fallback == "extractive" and "1920" in answer.text


def test_trim_removes_a_looped_sentence() -> None:
    answer = _rag(f"{GOOD} {GOOD} {GOOD}", "trim").answer("Who wrote The Salt Road?")
    assert answer.text == GOOD and answer.fallback == "trim"


def test_no_repeat_ngram_size_reaches_generate() -> None:
    from rag.config import GeneratorConfig
    from rag.generators.common import resolve_sampling

    assert resolve_sampling(GeneratorConfig(no_repeat_ngram_size=8)).no_repeat_ngram_size == 8
    assert resolve_sampling(GeneratorConfig()).no_repeat_ngram_size == 0


def test_the_answer_ngram_blocker_ends_loops_but_lets_the_prompt_be_quoted() -> None:
    torch = pytest.importorskip("torch")
    from rag.generators.hf import answer_ngram_blocker

    blocker = answer_ngram_blocker(3, prompt_length=4)
    prompt = [7, 8, 9, 7]
    # the answer so far: 7 8 9 7 8 -> a third "9" would repeat the 3-gram (7, 8, 9) of the answer
    ids = torch.tensor([[*prompt, 7, 8, 9, 7, 8]])
    scores = blocker(ids, torch.zeros(1, 12))
    assert scores[0, 9] == -torch.inf and torch.isfinite(scores[0, [0, 1, 7, 8]]).all()
    # the prompt's own 3-grams are not counted: quoting the sources stays possible
    quoting = blocker(torch.tensor([[*prompt, 7, 8]]), torch.zeros(1, 12))
    assert torch.isfinite(quoting).all()


# grounded sentence by sentence, but it answers "when" with the wrong part of the row: none of the
# facts the extractive reader finds (1920, Carnegie, Medal, Quillon, ...) is in it
WRONG_PART = "The Salt Road is about two sisters crossing the desert [1]."


def _agreeing_rag(text: str, share: float) -> RAG:
    config = load_config(
        None,
        [
            "generator.grounding_fallback=extractive",
            f"generator.fallback_min_agreement={share}",
            "retrieval.min_name_coverage=0",
        ],
    )
    return RAG(config, Retriever(), Canned(text))


def test_an_answer_that_misses_the_readers_facts_falls_back_when_asked() -> None:
    question = "Which medal did The Salt Road win?"
    kept = _rag(WRONG_PART, "extractive").answer(question)
    assert kept.text == WRONG_PART and kept.fallback is None  # grounded: the plain check passes it
    replaced = _agreeing_rag(WRONG_PART, 0.5).answer(question)
    assert replaced.fallback == "extractive" and "Carnegie Medal" in replaced.text
    assert replaced.llm_text == WRONG_PART
    right = "The Salt Road by Marta Quillon won the Carnegie Medal in 1920 [1]."
    assert _agreeing_rag(right, 0.5).answer(question).text == right


def test_agreement_counts_the_readers_numbers_and_names_not_the_questions() -> None:
    from rag.grounding import agreement, key_facts

    reader = "The Salt Road [1]: A novel by Marta Quillon set in 1920. It won the Carnegie Medal."
    keys = key_facts(reader, "When is The Salt Road set?")
    assert {"1920", "marta", "quillon", "carnegie", "medal"} <= keys
    assert not keys & {"salt", "road", "the"}  # in the question: repeating it proves nothing
    assert agreement("It is set in 1920 [1].", reader, "When is The Salt Road set?") == pytest.approx(
        1 / len(keys)
    )
    assert agreement("anything", "The Salt Road [1]: a short novel.", "what is it?") == 1.0


def test_fallback_min_agreement_is_validated() -> None:
    from rag.config import ConfigError

    with pytest.raises(ConfigError, match="generator.fallback_min_agreement"):
        load_config(None, ["generator.fallback_min_agreement=1.5"])
