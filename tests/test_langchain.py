"""LangChain: the official standard retriever suite (langchain-tests) and CatalogRetriever's own checks.

.venv/bin/python -m pytest tests/test_langchain.py -q
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import ValidationError

from rag.config import Config
from rag.langchain import CatalogRetriever
from rag.retrieval import Retriever
from tests.helpers import CATALOG, ArraySnapshot, StaticLive


@lru_cache(maxsize=1)
def _retriever() -> Retriever:
    from index.embedder import HashingEmbedder

    embedder = HashingEmbedder(64)
    vectors = embedder.embed([r.title for r in CATALOG])
    return Retriever(Config(), StaticLive(ArraySnapshot(CATALOG, vectors)), embedder)


class TestCatalogRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's own suite, unchanged: k in the constructor and in invoke, sync and async."""

    @property
    def retriever_constructor(self) -> type[CatalogRetriever]:
        return CatalogRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": _retriever()}

    @property
    def retriever_query_example(self) -> str:
        return "who wrote City of Djinns?"


def test_invoke_k_overrides_the_constructor_k() -> None:
    retriever = CatalogRetriever(retriever=_retriever(), k=5)
    assert len(retriever.invoke("mogs kittens", k=1)) == 1
    assert len(retriever.invoke("mogs kittens", k=3)) == 3
    assert len(retriever.invoke("mogs kittens")) == 5


async def test_ainvoke_honours_k() -> None:
    retriever = CatalogRetriever(retriever=_retriever(), k=5)
    assert len(await retriever.ainvoke("mogs kittens", k=2)) == 2


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_k_is_rejected_at_construction(k: Any) -> None:
    with pytest.raises(ValidationError, match="k"):
        CatalogRetriever(retriever=_retriever(), k=k)


@pytest.mark.parametrize("k", [0, -2, True])
def test_bad_k_per_call_is_rejected(k: Any) -> None:
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        CatalogRetriever(retriever=_retriever()).invoke("mogs kittens", k=k)


def test_from_config_keeps_k_zero_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Retriever, "from_config", classmethod(lambda cls, config: _retriever()))
    assert CatalogRetriever.from_config(Config()).k == Config().retrieval.k
    assert CatalogRetriever.from_config(Config(), k=2).k == 2
    with pytest.raises(ValidationError):
        CatalogRetriever.from_config(Config(), k=0)  # used to become retrieval.k silently


def test_retriever_field_is_typed() -> None:
    with pytest.raises(ValidationError, match="retriever"):
        CatalogRetriever(retriever="not a retriever")
    annotation = CatalogRetriever.model_fields["retriever"].annotation
    assert annotation is not Any and hasattr(annotation, "search")


def test_document_id_is_the_uid() -> None:
    docs = CatalogRetriever(retriever=_retriever(), k=2).invoke("who wrote City of Djinns?")
    assert all(isinstance(d, Document) for d in docs)
    assert docs[0].id == "B001" == docs[0].metadata["uid"]
    assert [d.id for d in docs] == [d.metadata["uid"] for d in docs]
