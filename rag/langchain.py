"""A langchain-core `BaseRetriever` over the same index.

    from rag.langchain import CatalogRetriever
    docs = CatalogRetriever.from_config(load_config()).invoke("who wrote City of Djinns?")
"""
from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from rag.config import Config


class CatalogRetriever(BaseRetriever):
    """Returns one Document per retrieved row: title and description as text, uid/title/score as metadata."""

    retriever: Any
    k: int = 5

    @classmethod
    def from_config(cls, config: Config, k: int | None = None) -> "CatalogRetriever":
        from rag.retrieval import Retriever

        return cls(retriever=Retriever.from_config(config), k=k or config.retrieval.k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.retriever.search(query, k=self.k)
        return [
            Document(
                page_content=f"{h.row.title}\n{h.row.content}".strip(),
                metadata={"uid": h.row.uid, "title": h.row.title, "score": h.score, "has_content": h.row.has_content},
            )
            for h in hits
        ]
