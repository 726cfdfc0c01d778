"""A langchain-core `BaseRetriever` over the same index.

    from rag.langchain import CatalogRetriever
    retriever = CatalogRetriever.from_config(load_config(), k=3)
    docs = retriever.invoke("who wrote City of Djinns?")          # 3 Documents
    docs = retriever.invoke("who wrote City of Djinns?", k=1)     # the number of results per call

LangChain's own standard suite (`langchain_tests.integration_tests.RetrieversIntegrationTests`)
runs against it in tests/test_langchain.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import Field

from rag.config import Config
from rag.types import Hit


@runtime_checkable
class CatalogSearch(Protocol):
    """What CatalogRetriever needs: `rag.retrieval.Retriever` (or anything with its `search`)."""

    def search(
        self,
        question: str,
        k: int | None = None,
        history: Sequence[dict[str, str]] = (),
        snapshot: Any = None,
    ) -> list[Hit]: ...


def _checked_k(k: Any, where: str) -> int:
    # bool is an int subclass: k=True must not mean one document
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{where}: k must be a whole number >= 1, got {k!r}")
    return k


def hit_to_document(hit: Hit) -> Document:
    """One retrieved row as a Document: id = uid, title and description as text, scores as metadata."""
    row = hit.row
    return Document(
        id=row.uid,
        page_content=f"{row.title}\n{row.content}".strip(),
        metadata={
            "uid": row.uid,
            "title": row.title,
            "score": float(hit.score),
            "has_content": row.has_content,
        },
    )


class CatalogRetriever(BaseRetriever):
    """Returns up to `k` Documents per query (fewer only when the index holds fewer rows).

    `k` is checked when the retriever is built (k=0 or negative: pydantic ValidationError) and again
    when a call passes its own: `retriever.invoke(query, k=1)`.
    """

    retriever: CatalogSearch
    k: int = Field(default=5, ge=1, strict=True, description="Documents per query (retrieval.k by default).")

    @classmethod
    def from_config(cls, config: Config, k: int | None = None) -> CatalogRetriever:
        from rag.retrieval import Retriever

        return cls(retriever=Retriever.from_config(config), k=config.retrieval.k if k is None else k)

    def _search(self, query: str, k: int | None) -> list[Document]:
        k = self.k if k is None else _checked_k(k, "CatalogRetriever.invoke")
        return [hit_to_document(h) for h in self.retriever.search(query, k=k)]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return self._search(query, k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        # the base class would call the sync method without `k`
        return await run_in_executor(None, self._search, query, k)
