from __future__ import annotations

import pytest

from rag.query import normalize_for_match, parse_question, title_similarity


@pytest.mark.parametrize(
    "question, title_query",
    [
        ("what is Mog's Kittens about?", "Mog's Kittens"),
        ("who wrote City of Djinns?", "City of Djinns"),
        ("tell me about the book City of Djinns", "City of Djinns"),
        ("do que se trata o livro Mog's Kittens?", "Mog's Kittens"),
        ("Quem escreveu o livro City of Djinns?", "City of Djinns"),
        ("mogs kittens", "mogs kittens"),
        ('is "The Cat in the Hat" good for kids?', "The Cat in the Hat"),
        ("Tell me about “City of Djinns” please", "City of Djinns"),
    ],
)
def test_title_query_strips_question_words(question: str, title_query: str) -> None:
    parsed = parse_question(question)
    assert parsed.title_query == title_query
    assert not parsed.followup


@pytest.mark.parametrize("question", ["who wrote it?", "and is it for kids?", "what is it about?", "quem escreveu?", "e ele?"])
def test_followups_are_detected(question: str) -> None:
    parsed = parse_question(question)
    assert parsed.followup
    assert parsed.title_query == ""


def test_normalize_folds_apostrophes_and_accents() -> None:
    assert normalize_for_match("Mog’s  Kittens!") == "mogs kittens"
    assert normalize_for_match("Crème Brûlée") == "creme brulee"


def test_title_similarity_tolerates_typos_and_ranks_the_right_title() -> None:
    good = title_similarity("mogs kitens", "Mog's Kittens")
    other = title_similarity("mogs kitens", "Mog the Forgetful Cat")
    assert good > 0.6 > other
    assert title_similarity("City of Djinns", "City of Djinns") == 1.0
    assert title_similarity("", "anything") == 0.0
