"""Small in-memory stand-ins shared by unit tests (the real index is tested in test_index_*)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rag.types import CatalogRow


class ArraySnapshot:
    """An index snapshot over an in-memory matrix: exact inner-product search, ids = row positions."""

    def __init__(self, rows: Sequence[CatalogRow], vectors: np.ndarray, version: str = "test") -> None:
        self._rows = list(rows)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.version = version
        self.rows = len(self._rows)
        self.embedding_model = "test"
        self.manifest = {"rows": self.rows}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.vectors.T
        k = min(k, len(self._rows))
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), order.astype(np.int64)

    def get_rows(self, ids: Sequence[int]) -> list[CatalogRow | None]:
        return [self._rows[i] if 0 <= i < len(self._rows) else None for i in ids]

    def get_by_uid(self, uid: str) -> CatalogRow | None:
        return next((r for r in self._rows if r.uid == uid), None)


class StaticLive:
    def __init__(self, snapshot: ArraySnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> ArraySnapshot:
        return self._snapshot


CATALOG = [
    CatalogRow(
        "B001",
        "City of Djinns: A Year in Delhi",
        "A travel memoir by William Dalrymple. The author spends a year living in Delhi with his wife. "
        "He explores the history of the city, from its ancient past to the partition.",
    ),
    CatalogRow(
        "B002",
        "Mog's Kittens",
        "A board book by Judith Kerr about Mog the cat and her new kittens. Perfect for toddlers aged 1 to 3. "
        "The kittens play and get into mischief around the house.",
    ),
    CatalogRow(
        "B003", "Mog the Forgetful Cat", "Judith Kerr's classic picture book about a forgetful cat named Mog."
    ),
    CatalogRow(
        "B004",
        "The Lighthouse Keeper's Daughter",
        "A novel written by Ada Finch. It follows a girl who grows up on a remote island lighthouse. "
        "When a storm wrecks a ship nearby, she must decide whom to save. Recommended for adult readers.",
    ),
    CatalogRow("B005", "Stainless Steel Garlic Press", ""),
    CatalogRow(
        "B006",
        "Learn Python the Hard Way",
        "A programming book for beginners that teaches Python with exercises.",
    ),
    CatalogRow(
        "B007",
        "The Cat in the Hat",
        "Dr. Seuss wrote this rhyming story of a mischievous cat who visits two children.",
    ),
    CatalogRow(
        "B008",
        "Harry Potter and the Chamber of Secrets (Book 2)",
        "The second year at Hogwarts for Harry, written by J.K. Rowling.",
    ),
    CatalogRow(
        "B009",
        "Harry Potter and the Prisoner of Azkaban (Book 3)",
        "The third book in the series by J.K. Rowling, where Harry meets Sirius Black.",
    ),
]


def wait_until_ready(
    process: subprocess.Popen[Any],
    url: str,
    output: Callable[[], str],
    timeout_s: float = 90,
    poll_s: float = 0.1,
) -> None:
    """Poll `url`/readyz until a started `rag serve` says ready; fail with its output if it exits or stalls."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"rag serve exited with {process.returncode}:\n{output()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"rag serve not ready after {timeout_s:.0f} s:\n{output()[-3000:]}")
        time.sleep(poll_s)
