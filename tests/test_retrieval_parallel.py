"""The fast retrieval path returns what the plain one returns.

    .venv/bin/python -m pytest tests/test_retrieval_parallel.py -q

`Retriever.search` runs the description search in a worker thread while the question is embedded
and the title index searched (`retrieval.parallel_paths`), and picks the description passages of
the hits it keeps instead of letting the description search fetch and match ten rows. Both are
checked here against the plain path (one step after the other, passages picked inside
`lexical_search`) on a real index version of 600 synthetic rows, before and after an update that
leaves a delta segment and tombstones: the same hits, scores and snippets, question by question.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any

import pytest

from index.build import build_index, update_index
from index.embedder import load_embedder
from index.store import IndexStore, LiveIndex
from index.testing import hashing_config, write_rows
from rag.config import Config
from rag.retrieval import Retriever
from rag.synthetic import generate_records
from rag.types import Hit


class PlainSnapshot:
    """A snapshot without `lexical_snippets`: the Retriever then takes `lexical_search`'s passages, as before."""

    def __init__(self, snapshot: Any) -> None:
        self._snapshot = snapshot

    def search(self, vectors: Any, k: int) -> Any:
        return self._snapshot.search(vectors, k)

    def get_rows(self, ids: Sequence[int]) -> Any:
        return self._snapshot.get_rows(ids)

    def lexical_search(self, question: str, k: int) -> list[tuple[int, float, str]]:
        return self._snapshot.lexical_search(question, k)


def questions(rows: list[dict[str, Any]], n: int, seed: int = 0) -> list[str]:
    """Described (a few words of a description), named (a title) and mixed questions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        row = rng.choice(rows)
        words = (row.get("content") or row["title"]).split()
        start = rng.randrange(max(1, len(words) - 6))
        phrase = " ".join(words[start : start + 7])
        out.append(
            [f"a book about {phrase}", f"who wrote {row['title']}?", f"procuro algo com {phrase}"][i % 3]
        )
    return out


def as_tuples(hits: list[Hit]) -> list[tuple[Any, ...]]:
    return [(h.row.uid, *astuple(h)[1:]) for h in hits]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[dict[str, Any]], Path]:
    tmp = tmp_path_factory.mktemp("parallel")
    config = hashing_config(tmp / "index", extra=["index.descriptions=true"])
    rows = list(generate_records(600, seed=3))
    build_index(config, [write_rows(tmp / "a.jsonl", rows)], progress=False)
    return config, rows, tmp


def retrievers(config: Config, fusion: str = "weighted") -> tuple[Retriever, Retriever, Retriever]:
    """(plain: to be given a PlainSnapshot, serial with late passages, parallel with late passages)."""
    store = IndexStore.from_config(config)
    embedder = load_embedder(config.embedding)

    def make(parallel: bool) -> Retriever:
        retrieval = replace(config.retrieval, parallel_paths=parallel, fusion=fusion)
        return Retriever(replace(config, retrieval=retrieval), LiveIndex(store), embedder)

    return make(False), make(False), make(True)


@pytest.mark.parametrize("fusion", ["weighted", "rrf"])
def test_parallel_paths_and_late_snippets_give_the_plain_hits(
    built: tuple[Config, list[dict[str, Any]], Path], fusion: str
) -> None:
    config, rows, _ = built
    plain, serial, parallel = retrievers(config, fusion)
    snippets = 0
    for question in questions(rows, 60):
        expected = plain.search(question, k=5, snapshot=PlainSnapshot(plain.snapshot))
        assert as_tuples(serial.search(question, k=5)) == as_tuples(expected), question
        assert as_tuples(parallel.search(question, k=5)) == as_tuples(expected), question
        snippets += sum(bool(h.snippet) for h in expected)
    assert snippets > 20  # the comparison covers passages, not only empty strings
    assert "lexical_wait" in parallel.last_timings and "lexical" in parallel.last_timings


def test_the_same_after_an_update_with_a_delta_and_tombstones(
    built: tuple[Config, list[dict[str, Any]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from index import lexical

    config, rows, tmp = built
    monkeypatch.setattr(lexical, "COMPACT_FRACTION", 0.5)  # keep the changes in a delta segment
    changed = [
        {**r, "content": (r.get("content") or "") + " A ferry crosses the fjord at dawn."} for r in rows[:30]
    ]
    update_index(
        config, [write_rows(tmp / "b.jsonl", changed)], [r["uid"] for r in rows[30:40]], progress=False
    )
    assert "lexical.delta.docs.npy" in IndexStore.from_config(config).manifest()["files"]
    plain, _, parallel = retrievers(config)
    for question in [*questions(rows, 30, seed=1), "the ferry crosses the fjord at dawn"]:
        expected = plain.search(question, k=5, snapshot=PlainSnapshot(plain.snapshot))
        assert as_tuples(parallel.search(question, k=5)) == as_tuples(expected), question
        assert not {h.row.uid for h in expected} & {r["uid"] for r in rows[30:40]}


def test_parallel_searches_from_many_threads_agree(built: tuple[Config, list[dict[str, Any]], Path]) -> None:
    config, rows, _ = built
    plain, _, parallel = retrievers(config)
    asked = questions(rows, 24, seed=2)
    expected = {q: as_tuples(plain.search(q, k=5, snapshot=PlainSnapshot(plain.snapshot))) for q in asked}
    got: dict[str, list[tuple[Any, ...]]] = {}

    def ask(part: list[str]) -> None:
        for q in part:
            got[q] = as_tuples(parallel.search(q, k=5))

    threads = [threading.Thread(target=ask, args=(asked[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_a_failing_description_search_in_the_worker_never_fails_the_query(
    built: tuple[Config, list[dict[str, Any]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, rows, _ = built
    _, _, parallel = retrievers(config)
    snapshot = parallel.snapshot

    def broken(*args: Any, **kwargs: Any) -> list[tuple[int, float, str]]:
        raise OSError("disk went away")

    monkeypatch.setattr(snapshot, "lexical_search", broken)
    hits = parallel.search(f"who wrote {rows[0]['title']}?", k=3, snapshot=snapshot)
    assert hits and all(h.snippet == "" for h in hits)
