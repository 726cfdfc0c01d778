"""Question answering over the AmazonTitles-1.3MM catalog.

    import rag
    answer = rag.answer("who wrote City of Djinns?")
    print(answer.text, [s.title for s in answer.sources])

Importing this package is light (no torch, faiss or transformers); models load on first use.
"""
from __future__ import annotations

from typing import Any

from rag.config import Config, ConfigError, load_config
from rag.types import Answer, CatalogRow, Hit, Source

__all__ = ["answer", "Answer", "Source", "Hit", "CatalogRow", "Config", "ConfigError", "load_config", "get_rag"]
__version__ = "0.1.0"

_DEFAULT: dict[int, Any] = {}


def get_rag(config: Config | str | None = None):
    """The RAG pipeline for a config (object or YAML path), built once and reused."""
    from rag.pipeline import RAG

    if isinstance(config, Config):
        return RAG.from_config(config)
    key = hash(config)
    if key not in _DEFAULT:
        _DEFAULT[key] = RAG.from_config(load_config(config))
    return _DEFAULT[key]


def answer(question: str, *, k: int | None = None, config: Config | str | None = None,
           history: list[dict[str, str]] | None = None, stream: bool = False) -> Any:
    """Answer `question` from the catalog; returns an Answer (or, with stream=True, an iterator of
    text pieces whose `.answer` attribute holds the final Answer once it is exhausted)."""
    return get_rag(config).answer(question, k=k, history=history, stream=stream)
