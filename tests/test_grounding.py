"""Grounding check (rag/grounding.py): lexical, citation-aware and embedding modes.

.venv/bin/python -m pytest tests/test_grounding.py -q
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from rag.grounding import (
    ABSTAIN_TEMPLATES,
    cited_numbers,
    cited_sources,
    is_abstention,
    is_abstention_sentence,
    split_answer,
    split_sentences,
    unsupported_sentences,
)
from rag.types import CatalogRow, Hit

DJINNS = Hit(
    CatalogRow(
        "B001",
        "City of Djinns: A Year in Delhi",
        "A travel memoir by William Dalrymple. The author spends a year living in Delhi with his "
        "wife. He explores the history of the city, from its ancient past to the partition.",
    ),
    0.9,
)
MOG = Hit(
    CatalogRow(
        "B002",
        "Mog's Kittens",
        "A board book by Judith Kerr about Mog the cat and her new kittens. Perfect for toddlers.",
    ),
    0.5,
)
PRESS = Hit(CatalogRow("B005", "Stainless Steel Garlic Press", ""), 0.4)
HITS = [DJINNS, MOG, PRESS]


def test_supported_and_unsupported_sentences_lexical() -> None:
    answer = (
        "City of Djinns is a travel memoir by William Dalrymple [1]. "
        "It won the Booker Prize for best science fiction novel in 1987. Yes."
    )
    assert unsupported_sentences(answer, HITS) == [
        "It won the Booker Prize for best science fiction novel in 1987."
    ]


def test_short_sentences_are_not_judged_and_empty_answer_is_fine() -> None:
    assert unsupported_sentences("Yes [1]. No.", HITS) == []
    assert unsupported_sentences("", HITS) == []


def test_no_hits_means_every_judged_sentence_is_unsupported() -> None:
    answer = "The garlic press is made of stainless steel."
    assert unsupported_sentences(answer, []) == [answer]
    assert unsupported_sentences(answer, [PRESS]) == []


def test_citation_of_the_wrong_source_is_flagged() -> None:
    right = "A board book by Judith Kerr about Mog the cat [2]."
    wrong = "A board book by Judith Kerr about Mog the cat [1]."
    assert unsupported_sentences(right, HITS) == []
    assert unsupported_sentences(wrong, HITS) == [wrong]
    # the lenient, citation-blind check accepts it (some row supports it)
    assert unsupported_sentences(wrong, HITS, check_citations=False) == []


def test_citation_beyond_the_given_sources_is_flagged() -> None:
    answer = "A travel memoir by William Dalrymple about Delhi [7]."
    assert unsupported_sentences(answer, HITS) == [answer]


def test_multiple_citations_pool_their_rows() -> None:
    answer = "Dalrymple wrote about Delhi while Judith Kerr wrote about kittens [1, 2]."
    assert unsupported_sentences(answer, HITS) == []
    assert unsupported_sentences(answer.replace("[1, 2]", "[1]"), HITS) != []


def test_cited_numbers_and_sources() -> None:
    text = "First [2]. Second [1, 3]. Again [2]. Bogus [9]."
    assert cited_numbers(text) == [2, 1, 3, 9]
    assert [h.row.uid for h in cited_sources(text, HITS)] == ["B002", "B001", "B005"]
    assert split_sentences("One. Two! Three?") == ["One.", "Two!", "Three?"]


def test_a_title_echo_is_unsupported() -> None:
    echo = "City of Djinns: A Year in Delhi [1]."
    assert unsupported_sentences(echo, HITS) == [echo]  # title words only, nothing from the description
    # a sentence that adds what the description says is judged as before
    assert (
        unsupported_sentences("City of Djinns: A Year in Delhi [1] is a travel memoir by Dalrymple.", HITS)
        == []
    )


def test_a_title_with_sentence_marks_is_not_cut_into_a_title_echo() -> None:
    diaries = Hit(
        CatalogRow(
            "B009",
            "The Kitchen Diaries II: A Year of Simple Suppers. Nigel Slater",
            "Recipes for simple suppers through the seasons by the cookery writer Nigel Slater.",
        ),
        0.9,
    )
    answer = (
        "The Kitchen Diaries II: A Year of Simple Suppers. Nigel Slater [1]: Recipes for simple suppers "
        "through the seasons by the cookery writer."
    )
    assert split_answer(answer, [diaries.row.title]) == [answer]
    assert len(split_sentences(answer)) == 2  # the plain splitter cuts the title ...
    assert unsupported_sentences(answer, [diaries]) == []  # ... the grounding check does not
    echo = "The Kitchen Diaries II: A Year of Simple Suppers. Nigel Slater [1]."
    assert unsupported_sentences(echo, [diaries]) == [echo]  # the whole title alone is still an echo


def test_a_sentence_repeating_the_question_is_unsupported() -> None:
    question = "What is the travel memoir City of Djinns about?"
    echo = "City of Djinns is a travel memoir [1]."
    # without the question the sentence shares enough words with row 1 to pass...
    assert unsupported_sentences(echo, HITS) == []
    # ...with it, every content word comes from the question or a title: an echo
    assert unsupported_sentences(echo, HITS, question=question) == [echo]
    answer = "City of Djinns is a travel memoir by William Dalrymple [1]."
    assert unsupported_sentences(answer, HITS, question=question) == []


@pytest.mark.parametrize(
    "text",
    [
        "The sources do not describe City of Djinns: A Year in Delhi.",
        "The sources do not describe the sources.",
        "As fontes não descrevem Mog's Kittens.",
        "I could not find a product in the catalog that matches your question. Try the exact title (in quotes).",
        "I don't know.",
        "I don\u2019t know which book you mean.",
        "I do not know.",
        "Não sei.",
        "The author is not mentioned in the sources.",
        "There is no information about the price.",
        "As fontes não dizem quem escreveu o livro.",
        "The sources don't say who wrote it [1].",
    ],
)
def test_abstentions_are_recognised_in_english_and_portuguese(text: str) -> None:
    assert is_abstention(text)


@pytest.mark.parametrize(
    "text",
    [
        "City of Djinns [1]: A travel memoir by William Dalrymple.",
        "Mog's Kittens is a board book by Judith Kerr [2]. The sources do not give its price.",
        "O livro é de William Dalrymple [1].",
        "",
    ],
)
def test_answers_are_not_abstentions(text: str) -> None:
    assert not is_abstention(text)


def test_abstain_templates_are_abstentions_and_shared_with_finetuning() -> None:
    from finetune.data import ABSTAIN

    assert ABSTAIN is ABSTAIN_TEMPLATES
    for template in ABSTAIN_TEMPLATES.values():
        assert is_abstention(template.format(title="Mog's Kittens"))


def test_abstention_sentences_are_not_judged() -> None:
    refusal = "The sources do not describe a cookbook of Italian pasta recipes."
    assert is_abstention_sentence(refusal)
    assert (
        unsupported_sentences(refusal, HITS) == []
    )  # judged by the evaluation, which knows the expected row
    assert unsupported_sentences("It is a cookbook of Italian pasta recipes.", HITS) != []


class BagOfWordsEmbedder:
    """A deterministic stand-in: hashed bag of lower-cased words with a small synonym table."""

    name = "bow-test"
    dimension = 256
    SYNONYMS: ClassVar[dict[str, str]] = {
        "writer": "author",
        "twelve": "year",
        "months": "year",
        "recounts": "memoir",
        "capital": "delhi",
    }

    def embed(self, texts, *, batch_size=None, progress=False):  # type: ignore[no-untyped-def]
        import zlib

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            for raw in text.lower().replace(".", " ").split():
                word = self.SYNONYMS.get(raw, raw)
                out[i, zlib.crc32(word.encode()) % self.dimension] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_embedding_mode_accepts_a_paraphrase_the_lexical_check_rejects() -> None:
    paraphrase = "The writer recounts twelve months in the capital [1]."
    assert unsupported_sentences(paraphrase, HITS) == [paraphrase]  # lexical: too few shared words
    embedder = BagOfWordsEmbedder()
    assert unsupported_sentences(paraphrase, HITS, embedder=embedder, min_similarity=0.3) == []
    assert (
        unsupported_sentences(paraphrase, HITS, embedder=embedder, mode="embedding", min_similarity=0.3) == []
    )
    # a higher bar rejects it again, so the threshold really is applied
    assert unsupported_sentences(paraphrase, HITS, embedder=embedder, min_similarity=0.99) == [paraphrase]


def test_embedding_mode_respects_citations_and_rejects_unrelated_text() -> None:
    embedder = BagOfWordsEmbedder()
    unrelated = "Quantum chromodynamics lattice simulations need large clusters."
    assert unsupported_sentences(
        unrelated, HITS, embedder=embedder, mode="embedding", min_similarity=0.3
    ) == [unrelated]
    wrong = "The writer recounts twelve months in the capital [2]."
    assert unsupported_sentences(wrong, HITS, embedder=embedder, min_similarity=0.3) == [wrong]


def test_mode_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="needs an embedder"):
        unsupported_sentences("some words here to judge", HITS, mode="embedding")
    with pytest.raises(ValueError, match="grounding mode"):
        unsupported_sentences("some words here to judge", HITS, mode="fuzzy")  # type: ignore[arg-type]


@pytest.mark.integration
def test_real_minilm_embeddings_accept_paraphrases_and_reject_fabrications(minilm) -> None:  # type: ignore[no-untyped-def]
    paraphrases = [
        "It is a memoir about a year spent in India's capital [1].",
        "The writer recounts twelve months in Delhi [1].",
    ]
    fabricated = [
        "It is a cookbook of Italian pasta recipes [1].",
        "The story follows a wizard at a school of magic [1].",
    ]
    for sentence in paraphrases:
        assert unsupported_sentences(sentence, HITS) == [sentence]
        assert unsupported_sentences(sentence, HITS, embedder=minilm) == [], sentence
    for sentence in fabricated:
        assert unsupported_sentences(sentence, HITS, embedder=minilm) == [sentence]
