"""What every embedder here shares: the LRU cache of query vectors and L2 normalisation.

Its own module so that `index.embedder` (which loads the ONNX backend on demand) and
`index.onnx_embedder` (whose embedder uses both) do not import each other.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class QueryCache:
    """A small thread-safe LRU cache of query vectors (questions repeat in chat and in evaluations)."""

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        if not self.size:
            return None
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        if not self.size:
            return
        value.setflags(write=False)  # callers share the cached array; nobody may modify it
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # an empty text stays the zero vector instead of becoming NaN
    return vectors / norms


class CachedQueryMixin:
    """`embed_query` through the LRU cache `self._cache`, shared by every embedder here."""

    _cache: QueryCache

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        raise NotImplementedError

    def embed_query(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is None:
            cached = self.embed([text])[0]
            self._cache.put(text, cached)
        return cached
