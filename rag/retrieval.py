"""Question -> top-k catalog rows with scores.

    from rag.retrieval import Retriever
    hits = Retriever.from_config(load_config()).search("who wrote City of Djinns?", k=5)

Three steps: `rag.query.parse_question` turns the question into a title query (quoted titles win,
question words are stripped, follow-ups reuse the conversation's last product question); the dense
path embeds it and asks FAISS for `retrieval.candidates` rows; each candidate's score is fused with a
typo-tolerant lexical title similarity (`rag.query.title_similarity`). When the index version holds
a lexical description index (`snapshot.lexical_search`), its candidates are fused in too, so
products can be found from what users remember of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.config import Config
from rag.query import ParsedQuestion, TitleMatcher, parse_question
from rag.types import CatalogRow, Hit

log = logging.getLogger(__name__)


def _history_title_query(history: Sequence[dict[str, str]]) -> str:
    """The last user turn that named a product (for follow-ups like "who wrote it?")."""
    for message in reversed(list(history)):
        if message.get("role") == "user":
            parsed = parse_question(message.get("content", ""))
            if parsed.title_query:
                return parsed.title_query
    return ""


class Retriever:
    """Dense title search fused with lexical title (and optionally description) scores."""

    def __init__(self, config: Config, live_index: Any, embedder: Any) -> None:
        if config.retrieval.k <= 0:
            raise ValueError(f"retrieval.k must be > 0, got {config.retrieval.k}")
        if getattr(config.retrieval, "description_candidates", 1) <= 0:
            raise ValueError(
                f"retrieval.description_candidates must be > 0, got {config.retrieval.description_candidates}"
            )
        self.config = config
        self.live_index = live_index
        self.embedder = embedder
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: Config, *, embedder: Any = None) -> Retriever:
        from index.embedder import load_embedder
        from index.store import IndexStore, LiveIndex

        store = IndexStore.from_config(config)  # honours hnsw_ef_search, ivf_nprobe, checksum settings
        if store.current_version() is None:
            versions = store.complete_versions()
            if versions:  # `current` is missing or empty, but there are versions to serve
                raise FileNotFoundError(
                    f"{store.current_file}: missing or empty, so no version is served although "
                    f"{len(versions)} exist under {store.versions_dir}; `rag index rollback {versions[-1]}` "
                    "serves the newest (`rag index versions` lists them)"
                )
            raise FileNotFoundError(
                f"no index at {config.index.path!r} (index.path): build one with "
                f"`rag index build --data PATH` or run `rag demo` for the bundled synthetic catalog"
            )
        # a damaged current version (no directory, no manifest, a bad file) says so: open_current names the file
        live = LiveIndex(store, mmap=bool(getattr(config.index, "mmap", True)))
        snapshot = live.snapshot()
        if embedder is None:
            embedder = load_embedder(config.embedding)
        built_with = getattr(snapshot, "embedding_model", None)
        if built_with and getattr(embedder, "name", built_with) != built_with:
            raise ValueError(
                f"the index at {config.index.path} was built with embedding model {built_with!r} but "
                f"embedding.model gives {embedder.name!r}: rebuild the index or set embedding.model={built_with}"
            )
        return cls(config, live, embedder)

    @property
    def snapshot(self) -> Any:
        return self.live_index.snapshot()

    def _embed_query(self, text: str) -> np.ndarray:
        if hasattr(self.embedder, "embed_query"):
            return np.asarray(self.embedder.embed_query(text), dtype=np.float32).reshape(1, -1)
        return np.asarray(self.embedder.embed([text]), dtype=np.float32).reshape(1, -1)

    def parse(self, question: str, history: Sequence[dict[str, str]] = ()) -> ParsedQuestion:
        parsed = parse_question(question)
        if parsed.followup and history:
            previous = _history_title_query(history)
            if previous:
                parsed.title_query = previous
        return parsed

    def search(
        self,
        question: str,
        k: int | None = None,
        history: Sequence[dict[str, str]] = (),
        snapshot: Any = None,
    ) -> list[Hit]:
        """Top-k rows for a question, best first. `history` lets follow-ups find the product in discussion."""
        hits, timings = self.search_with_timings(question, k, history, snapshot)
        self.last_timings = timings  # convenience for single-threaded callers; threads use the returned dict
        return hits

    def search_with_timings(
        self,
        question: str,
        k: int | None = None,
        history: Sequence[dict[str, str]] = (),
        snapshot: Any = None,
    ) -> tuple[list[Hit], dict[str, float]]:
        """Like `search`, also returning this call's stage timings (seconds); safe to call from many threads."""
        k = k or self.config.retrieval.k
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        cfg = self.config.retrieval
        snapshot = snapshot or self.snapshot
        timings: dict[str, float] = {}
        parsed = self.parse(question, history)
        query = parsed.title_query or question.strip()
        if not query:
            return [], timings

        # a follow-up ("who wrote it?") names no product: its words would only match unrelated descriptions
        use_descriptions = (
            cfg.use_descriptions and not parsed.followup and hasattr(snapshot, "lexical_search")
        )
        n_candidates = max(cfg.candidates, k)
        n_description = max(getattr(cfg, "description_candidates", n_candidates), k)
        # passages are picked for the hits kept, from the rows the fusion fetches anyway (not 10 fetched here)
        late_snippets = hasattr(snapshot, "lexical_snippets")
        pending: Future[_Described] | None = None
        if use_descriptions and getattr(cfg, "parallel_paths", False):
            pending = _worker_pool().submit(_described, snapshot, question, n_description, not late_snippets)

        t0 = time.perf_counter()
        vector = self._embed_query(query)
        timings["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with faiss_threads(cfg.faiss_threads):
            scores, ids = snapshot.search(vector, n_candidates)
        dense = {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if int(i) != -1}
        timings["search"] = time.perf_counter() - t0

        described = _Described({}, {}, [], 0.0)
        if pending is not None:
            t0 = time.perf_counter()
            described = pending.result()
            timings["lexical_wait"] = time.perf_counter() - t0  # what the overlap did not hide
        elif use_descriptions:
            described = _described(snapshot, question, n_description, not late_snippets)
        if use_descriptions:
            timings["lexical"] = described.seconds
        description, snippets = described.scores, described.snippets

        t0 = time.perf_counter()
        candidate_ids = list(dict.fromkeys(list(dense) + list(description)))
        hit_ids: dict[int, int] = {}  # id(hit) -> faiss id, for the passages picked below
        if cfg.fusion == "weighted":
            hits = self._weighted_top(
                query, candidate_ids, snapshot.get_rows, dense, description, snippets, k, hit_ids
            )
        else:
            rows = snapshot.get_rows(candidate_ids)
            hits = self._fuse(query, parsed, candidate_ids, rows, dense, description, snippets, hit_ids)[:k]
        if late_snippets and described.ranked:
            _add_snippets(snapshot, question, hits, hit_ids, described.ranked)
        timings["fuse"] = time.perf_counter() - t0
        return hits, timings

    def _weighted_top(
        self,
        query: str,
        ids: list[int],
        get_rows: Any,
        dense: dict[int, float],
        description: dict[int, float],
        snippets: dict[int, str],
        k: int,
        hit_ids: dict[int, int] | None = None,
    ) -> list[Hit]:
        """The top k of `_fuse` with `fusion: weighted`, the same hits in the same order, for less work.

        A candidate's score cannot exceed its score with a perfect title similarity (1.0), which
        needs no row: candidates are fetched and scored in blocks, best bound first, until the
        k-th best score so far is above every bound left. Fetching and matching all ~70 rows'
        titles was most of a query's time after the embedding."""
        cfg = self.config.retrieval
        top_description = max(description.values(), default=0.0)
        bounds = [weighted_score(dense.get(f), 1.0, description.get(f), top_description, cfg) for f in ids]
        order = sorted(range(len(ids)), key=lambda i: -bounds[i])  # stable: ties keep candidate order
        match = TitleMatcher(query)
        scored: dict[int, Hit] = {}  # candidate position -> hit
        best: list[float] = []  # scores so far, descending
        block = max(2 * k, 8)
        for start in range(0, len(order), block):
            if len(best) >= k and bounds[order[start]] < best[k - 1]:
                break  # nothing left can reach the top k (or tie with its last)
            part = order[start : start + block]
            for i, row in zip(part, get_rows([ids[i] for i in part]), strict=True):
                if row is None:
                    continue
                fid = ids[i]
                d, lexical = dense.get(fid), match(row.title)
                score = weighted_score(d, lexical, description.get(fid), top_description, cfg)
                hit = Hit(row, float(score), d, lexical, snippets.get(fid, ""))
                scored[i] = hit
                if hit_ids is not None:
                    hit_ids[id(hit)] = fid
                best.append(hit.score)
            best.sort(reverse=True)
        hits = [scored[i] for i in sorted(scored)]  # candidate order, as `_fuse` sorts them
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:k]

    def _fuse(
        self,
        query: str,
        parsed: ParsedQuestion,
        ids: list[int],
        rows: list[CatalogRow | None],
        dense: dict[int, float],
        description: dict[int, float],
        snippets: dict[int, str],
        hit_ids: dict[int, int] | None = None,
    ) -> list[Hit]:
        cfg = self.config.retrieval
        hits: list[Hit] = []
        top_description = max(description.values(), default=0.0)
        dense_rank = {fid: r for r, fid in enumerate(sorted(dense, key=dense.__getitem__, reverse=True))}
        desc_rank = {
            fid: r for r, fid in enumerate(sorted(description, key=description.__getitem__, reverse=True))
        }
        match = TitleMatcher(query)
        for fid, row in zip(ids, rows, strict=True):
            if row is None:
                continue
            d = dense.get(fid)
            lexical = match(row.title)
            if cfg.fusion == "dense":
                score = d if d is not None else 0.0
            elif cfg.fusion == "rrf":
                score = 0.0
                if fid in dense_rank:
                    score += 1.0 / (cfg.rrf_k + dense_rank[fid] + 1)
                if fid in desc_rank:
                    score += cfg.description_weight / (cfg.rrf_k + desc_rank[fid] + 1)
                score += cfg.lexical_weight * lexical / (cfg.rrf_k + 1)
            else:
                score = weighted_score(d, lexical, description.get(fid), top_description, cfg)
            hit = Hit(
                row=row,
                score=float(score),
                dense_score=d,
                lexical_score=lexical,
                snippet=snippets.get(fid, ""),
            )
            hits.append(hit)
            if hit_ids is not None:
                hit_ids[id(hit)] = fid
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits


@dataclass
class _Described:
    """The description path's answer: BM25 scores, passages found so far, faiss ids best first."""

    scores: dict[int, float]
    snippets: dict[int, str]
    ranked: list[int]
    seconds: float


def _described(snapshot: Any, question: str, k: int, snippets: bool) -> _Described:
    """`snapshot.lexical_search` as the fusion takes it; runs in the caller or in a worker thread."""
    t0 = time.perf_counter()
    scores: dict[int, float] = {}
    passages: dict[int, str] = {}
    try:
        found = (
            snapshot.lexical_search(question, k)
            if snippets
            else snapshot.lexical_search(question, k, snippets=False)
        )
        for item in found:
            fid, score = int(item[0]), float(item[1])
            scores[fid] = score
            if len(item) > 2 and item[2]:
                passages[fid] = str(item[2])
    except Exception as exc:  # noqa: BLE001 - the description index is an extra: never fail the query for it
        log.warning("description search failed: %s", exc)
    return _Described(scores, passages, list(scores), time.perf_counter() - t0)


def _add_snippets(
    snapshot: Any, question: str, hits: list[Hit], hit_ids: dict[int, int], ranked: list[int]
) -> None:
    """Give the kept hits the passages `lexical_search` would have given its first SNIPPET_ROWS rows.

    Only the hits returned need one: picking them here, from rows already fetched, costs a few
    hundred microseconds less than fetching and matching ten rows inside the description search."""
    from index.lexical import SNIPPET_ROWS

    with_passage = set(ranked[:SNIPPET_ROWS])
    chosen = [i for i, h in enumerate(hits) if hit_ids.get(id(h)) in with_passage]
    if not chosen:
        return
    for i, text in zip(
        chosen, snapshot.lexical_snippets(question, [hits[i].row for i in chosen]), strict=True
    ):
        hits[i].snippet = text


_POOL: list[ThreadPoolExecutor] = []  # made on first use: importing rag.retrieval starts no thread
_POOL_LOCK = threading.Lock()


def _worker_pool() -> ThreadPoolExecutor:
    """Threads for the description path (retrieval.parallel_paths), shared by every Retriever.

    Threads start as requests need them, up to 8 (concurrent API requests each use one)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=8, thread_name_prefix="rag-descriptions"))
        return _POOL[0]


@contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """Run one FAISS call on `threads` OpenMP threads (retrieval.faiss_threads; 0 leaves OpenMP alone).

    FAISS and torch share one OpenMP runtime, whose thread count is a per-thread setting: a
    process-wide `faiss.omp_set_num_threads(1)` also put torch (query embedding, the LLM) on one
    thread. The setting is changed for this call in the calling thread only and restored after it.
    """
    if threads <= 0:
        yield
        return
    import faiss

    previous = faiss.omp_get_max_threads()
    if previous == threads:
        yield
        return
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def weighted_score(
    dense: float | None, lexical: float, description: float | None, top_description: float, cfg: Any
) -> float:
    """`retrieval.fusion=weighted`: the title score, lifted by description evidence when that is stronger.

    title = (1 - lexical_weight) * dense cosine + lexical_weight * title similarity (both ~[0, 1]).
    A row the description index returned also gets
        description_weight * description / top_description + 0.1 * title similarity,
    i.e. its description score relative to the best description match of this question, and the
    row keeps the larger of the two. The best-described row so reaches `description_weight` (0.5,
    above retrieval.min_score) even when its title shares no word with the question, while a row
    whose title matches (score ~0.6-1.0) is not pushed down by descriptions. Tuned on the sample
    questions with 20k synthetic distractor rows (docs/descriptions.md): adding the description
    score instead of taking the maximum, or normalising it by the question's maximum possible
    BM25 score, found fewer described products (recall@1 0.66-0.89 against 0.97).
    """
    w = cfg.lexical_weight
    score = (1 - w) * (dense if dense is not None else 0.0) + w * lexical
    if description and top_description > 0:
        score = max(score, cfg.description_weight * description / top_description + 0.1 * lexical)
    return score
