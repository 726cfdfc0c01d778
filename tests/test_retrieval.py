from __future__ import annotations

import pytest

from rag.config import Config
from rag.retrieval import Retriever
from tests.helpers import CATALOG, ArraySnapshot, StaticLive


@pytest.fixture(scope="module")
def retriever(minilm) -> Retriever:  # type: ignore[no-untyped-def]
    vectors = minilm.embed([r.title for r in CATALOG])
    return Retriever(Config(), StaticLive(ArraySnapshot(CATALOG, vectors)), minilm)


@pytest.mark.parametrize(
    "question, uid",
    [
        ("who wrote City of Djinns?", "B001"),
        ("tell me about the book City of Djinns", "B001"),
        ("what is Mog's Kittens about?", "B002"),
        ("do que se trata o livro Mog's Kittens?", "B002"),
        ("mogs kittens", "B002"),
        ("mogs kitens", "B002"),
        ("the lighthouse keepers daughter", "B004"),
        ('"Mog the Forgetful Cat"', "B003"),
        ("harry potter prisoner of azkaban", "B009"),
        ("garlic press", "B005"),
    ],
)
def test_question_style_queries_find_their_product(retriever: Retriever, question: str, uid: str) -> None:
    hits = retriever.search(question, k=3)
    assert hits[0].row.uid == uid, [(h.row.title, round(h.score, 3)) for h in hits]
    assert hits[0].score >= Config().retrieval.min_score
    assert hits == sorted(hits, key=lambda h: h.score, reverse=True)


def test_lexical_fusion_beats_dense_alone_on_a_near_duplicate(retriever: Retriever) -> None:
    hits = retriever.search("Harry Potter and the Chamber of Secrets", k=2)
    assert hits[0].row.uid == "B008"
    assert hits[0].lexical_score is not None and hits[0].lexical_score > hits[1].lexical_score


def test_followup_uses_the_product_from_history(retriever: Retriever) -> None:
    history = [
        {"role": "user", "content": "what is City of Djinns about?"},
        {"role": "assistant", "content": "..."},
    ]
    assert retriever.search("who wrote it?", k=1, history=history)[0].row.uid == "B001"


def test_k_is_respected_and_validated(retriever: Retriever) -> None:
    assert len(retriever.search("cat", k=4)) == 4
    with pytest.raises(ValueError, match="k must be > 0"):
        retriever.search("cat", k=-1)


def test_timings_are_recorded(retriever: Retriever) -> None:
    retriever.search("mogs kittens", k=2)
    assert {"embed", "search", "fuse"} <= set(retriever.last_timings)


def test_langchain_retriever_returns_documents(retriever: Retriever) -> None:
    from rag.langchain import CatalogRetriever

    docs = CatalogRetriever(retriever=retriever, k=2).invoke("who wrote City of Djinns?")
    assert len(docs) == 2
    assert docs[0].metadata["uid"] == "B001"
    assert docs[0].page_content.startswith("City of Djinns")


def test_weighted_fusion_scores_fewer_rows_but_returns_the_same_top_k(
    retriever: Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_weighted_top` stops once no bound can reach the top k: its hits equal scoring every candidate."""
    questions = ["who wrote City of Djinns?", "mogs kitens", "cat", "garlic press", "harry potter", "zzz"]
    fast = {(q, k): retriever.search(q, k=k) for q in questions for k in (1, 2, 3, 5, len(CATALOG))}

    def score_all(self, query, ids, get_rows, dense, description, snippets, k, hit_ids=None):  # type: ignore[no-untyped-def]
        rows = get_rows(ids)
        return self._fuse(query, self.parse(query), ids, rows, dense, description, snippets, hit_ids)[:k]

    monkeypatch.setattr(Retriever, "_weighted_top", score_all)
    for (q, k), hits in fast.items():
        assert hits == retriever.search(q, k=k), (q, k)
