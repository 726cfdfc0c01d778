"""Shared value types and the small protocols every backend implements.

Nothing here imports torch, faiss or transformers: `import rag` must stay light.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class CatalogRow:
    """One cleaned product of the catalog."""

    uid: str
    title: str
    content: str = ""
    source: str | None = None  # file the row came from
    line: int | None = None  # 1-based line (or array position) in that file

    @property
    def has_content(self) -> bool:
        return bool(self.content)

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "title": self.title, "content": self.content}


@dataclass
class Hit:
    """A retrieved row with its fused score (higher is better) and the parts it came from."""

    row: CatalogRow
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None
    snippet: str = ""  # the passage of the description that matched best, if any


@dataclass
class Source:
    """A row an answer cites."""

    uid: str
    title: str
    score: float
    snippet: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "score": round(float(self.score), 4),
            "snippet": self.snippet,
        }


@dataclass
class Answer:
    """What `rag.answer()` returns."""

    question: str
    text: str
    sources: list[Source] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    found: bool = True  # False when nothing relevant was retrieved
    unsupported_sentences: list[str] = field(default_factory=list)  # sentences no source supports
    generator: str = "extractive"
    # "stop": the generator ended its turn (end-of-turn token, or a fixed answer); "length": it ran
    # into max_new_tokens and the text is cut; None: the backend cannot tell
    finish_reason: str | None = None
    new_tokens: int | None = None  # tokens the generator produced (LLM backends)
    # generator.grounding_fallback: "trim" (unsupported sentences removed) or "extractive" (the LLM's
    # answer replaced by the extractive one); None: the generator's answer as it came. llm_text is
    # the LLM's own answer whenever a fallback changed it.
    fallback: str | None = None
    llm_text: str | None = None
    # the chat messages the generator was given (system prompt, retrieved rows, history, question):
    # what `usage.prompt_tokens` counts; not part of to_dict()
    prompt_messages: list[dict[str, str]] | None = field(default=None, repr=False, compare=False)

    @property
    def grounded(self) -> bool:
        return not self.unsupported_sentences

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "sources": [s.to_dict() for s in self.sources],
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "found": self.found,
            "grounded": self.grounded,
            "unsupported_sentences": list(self.unsupported_sentences),
            "generator": self.generator,
            "finish_reason": self.finish_reason,
            "new_tokens": self.new_tokens,
            "fallback": self.fallback,
            "llm_text": self.llm_text,
        }


@dataclass
class GenerationRequest:
    """Everything a generator needs: the question, the retrieved rows and the chat messages built from them."""

    question: str
    hits: list[Hit]
    messages: list[dict[str, str]]  # chat messages from rag.prompt.build_messages
    history: list[dict[str, str]] = field(default_factory=list)
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    # set by the generator once it is done (per request, so concurrent requests never mix them)
    finish_reason: str | None = None  # "stop" (end of turn) or "length" (max_new_tokens reached)
    new_tokens: int | None = None
    # set by the pipeline when generator.grounding_fallback replaced or trimmed the LLM's answer
    fallback: str | None = None  # "trim" or "extractive"
    llm_text: str | None = None  # the LLM's own answer before that
    # set by the pipeline: a follow-up ("what is it about?") with no product under discussion
    needs_product: bool = False


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    name: str
    dimension: int

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray: ...


@runtime_checkable
class VectorIndex(Protocol):
    """Inner-product search over int64 ids (ids are derived from uids and stay stable)."""

    @property
    def ntotal(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Generator(Protocol):
    """Writes the answer text from a GenerationRequest."""

    name: str

    def generate(self, request: GenerationRequest) -> str: ...

    def stream(self, request: GenerationRequest) -> Iterator[str]: ...
