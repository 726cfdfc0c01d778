"""Question answering over the AmazonTitles-1.3MM catalog.

    import rag
    answer = rag.answer("who wrote City of Djinns?")
    print(answer.text, [s.title for s in answer.sources])

Importing this package is light (no torch, faiss or transformers); models load on first use.

`rag.answer()` builds one pipeline (index, embedder, generator) per configuration and keeps it:
later calls with an equal configuration (the same YAML path, or a `Config` with the same
content, whether the same object or not) reuse it. `rag.close(config)` drops and closes one,
`rag.close()` all of them; a `RAG` you build yourself (`rag.pipeline.RAG.from_config`) is yours
to keep or `close()`.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any, Literal, overload

from rag.config import Config, ConfigError, load_config
from rag.types import Answer, CatalogRow, Hit, Source

if TYPE_CHECKING:
    from rag.pipeline import RAG, AnswerStream

__all__ = [
    "RAG",
    "Answer",
    "AnswerStream",
    "CatalogRow",
    "Config",
    "ConfigError",
    "Hit",
    "Source",
    "answer",
    "close",
    "get_rag",
    "load_config",
]
__version__ = "0.1.0"

# content key -> pipeline; YAML path (or None: the defaults) -> content key
_PIPELINES: dict[str, RAG] = {}
_PATH_KEYS: dict[str | None, str] = {}
_LOCK = threading.Lock()


def config_key(config: Config) -> str:
    """The configuration's content as canonical JSON: equal configs, equal keys."""
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def _resolve(config: Config | str | os.PathLike[str] | None) -> tuple[str, Config | None]:
    if isinstance(config, Config):
        return config_key(config), config
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config: expected a rag.Config, a YAML path or None, got {type(config).__name__}")
    path = None if config is None else os.fspath(config)
    key = _PATH_KEYS.get(path)
    if key is not None:
        return key, None
    loaded = load_config(path)
    key = config_key(loaded)
    _PATH_KEYS[path] = key
    return key, loaded


def get_rag(config: Config | str | os.PathLike[str] | None = None) -> RAG:
    """The pipeline for a config (a `Config`, a YAML path, or None for the defaults), built once and reused.

    The cache key is the configuration's content, so a `Config` object passed again (or an equal
    one) never rebuilds the pipeline: the embedding model and the index are loaded once."""
    from rag.pipeline import RAG

    key, loaded = _resolve(config)
    pipeline = _PIPELINES.get(key)
    if pipeline is not None:
        return pipeline
    with _LOCK:  # two threads asking at once build it once
        pipeline = _PIPELINES.get(key)
        if pipeline is None:
            if loaded is None:  # the path was resolved earlier, then its pipeline was closed
                # (a Config always comes back from _resolve as itself)
                loaded = (
                    config
                    if isinstance(config, Config)
                    else load_config(None if config is None else os.fspath(config))
                )
            pipeline = RAG.from_config(loaded)
            _PIPELINES[key] = pipeline
    return pipeline


def close(config: Config | str | os.PathLike[str] | None = None) -> int:
    """Drop cached pipelines and close them (generator clients, index connections); returns how many.

    `rag.close()` closes every pipeline `rag.answer()` built; `rag.close(config)` only the one for
    that configuration (`rag.close(rag.Config())` for the defaults' one). The next `rag.answer()`
    builds a fresh one."""
    with _LOCK:
        if config is None:
            dropped = list(_PIPELINES.values())
            _PIPELINES.clear()
            _PATH_KEYS.clear()
        else:
            key, _ = _resolve(config)
            dropped = [p for p in [_PIPELINES.pop(key, None)] if p is not None]
    for pipeline in dropped:
        pipeline.close()
    return len(dropped)


@overload
def answer(
    question: str,
    *,
    k: int | None = ...,
    config: Config | str | os.PathLike[str] | None = ...,
    history: list[dict[str, str]] | None = ...,
    stream: Literal[False] = ...,
) -> Answer: ...


@overload
def answer(
    question: str,
    *,
    k: int | None = ...,
    config: Config | str | os.PathLike[str] | None = ...,
    history: list[dict[str, str]] | None = ...,
    stream: Literal[True],
) -> AnswerStream: ...


def answer(
    question: str,
    *,
    k: int | None = None,
    config: Config | str | os.PathLike[str] | None = None,
    history: list[dict[str, str]] | None = None,
    stream: bool = False,
) -> Answer | AnswerStream:
    """Answer `question` from the catalog; returns an Answer (or, with stream=True, an AnswerStream:
    an iterator of text pieces whose `.answer` attribute holds the final Answer once it is exhausted)."""
    pipeline = get_rag(config)
    if stream:
        return pipeline.answer(question, k=k, history=history, stream=True)
    return pipeline.answer(question, k=k, history=history)


def __getattr__(name: str) -> Any:
    # rag.AnswerStream and rag.RAG without importing the pipeline module at `import rag`
    if name in ("AnswerStream", "RAG"):
        from rag import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
