"""`index.type: auto` (the default): exact search for small catalogs, a tuned IVF index for large ones.

    rag index build --data trn.json                      # auto: ivf at this size, nprobe tuned
    rag index info                                       # index: ivf ... auto: chose ivf, nlist, nprobe, recall

The builder fills an exact (flat) index as usual, because the row count of a streamed catalog is
only known at its end. Then `finish_auto_index`:

* fewer than `index.auto_ivf_min_rows` rows (default 20,000): keeps the flat index. Exact search
  over 20,000 384-d vectors is ~1.5 MFLOP per query, a few milliseconds on one core.
* otherwise builds an `IndexIVFFlat` (inner product) from the same vectors (no re-embedding):
  - nlist = 4 * sqrt(rows), rounded, within [16, 4096] and at most (training rows) / 39 (FAISS's
    minimum of points per centroid). At 1.3M rows that is 4,096 lists of ~320 vectors;
  - the coarse quantizer is trained on a random sample of 40 * nlist vectors (164k at 1.3M),
    drawn from rows other than the tuning rows below, by 5 k-means iterations (FAISS's IVF default
    is 10: at 300k rows, one thread, 10 -> 5 cut training from 33.7 s to 17.8 s, and the tuned nprobe
    went from 51 to 54 of 2,191 lists; with two threads 54 -> 52. Whatever the centroids, the recall
    criterion below is checked on the final index, so fewer iterations can only cost nprobe);
  - nprobe: `index.auto_tune_queries` (300) rows are held back from training; their titles are
    embedded as queries in four forms (the title with a typo, the title without its last word,
    "what is <title> about?", "who wrote <title>?"), so the query is never just the stored vector;
    ground truth is the exact top-10 over the flat vectors (`exact_top_k`). nprobe 1, 2, 4, ... is tried until recall@10
    less 1.96 standard errors (over the queries) reaches `index.auto_recall_target` (0.98), then
    bisected down to the smallest nprobe that does: the margin allows for the tuning sample's own
    noise. (At 1.3M rows it chose nprobe 5, 0.983 on the tuning queries; the benchmark's own 200
    questions measured 0.958 there: docs/performance.md.)
    A returned row whose exact score ties the 10th exact score counts as a hit: rows with identical
    titles have identical vectors, so the exact top-10 is ambiguous at its boundary.

When the build embeds on CUDA (`embedding.device: cuda`), the same steps run on that GPU through
torch: k-means (the same sample and seed, 10 iterations: cheap there, and fewer lists to search;
centroids normalised, as the rows are), the
assignment of every row to its list (then handed to FAISS with `add_core`, so FAISS does not search its
quantizer again), and the exact top-10 of the tuning queries, all in one pass over the flat vectors.
On the H200's 16-core host the CPU version of this stage took 74.5 s for 2.25M rows; nprobe is
tuned on the result either way, so the GPU's other centroids can only move nprobe, never the recall.

The manifest's `index` section records the outcome under `auto` (chosen type, rows, nlist, nprobe,
measured recall and its lower bound, both for every nprobe tried, the seconds it took); `index.params` carries
nlist and nprobe as for a hand-set ivf index, so serving and updates need nothing new. Updates keep
the parent's choice (a delta never changes the base; compaction keeps its type and quantizer);
`rag index build` chooses again. Peak memory while converting: the flat vectors plus the IVF copy
(2 x 2 GB at 1.3M rows), released to one copy before the version is written.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .vector import FaissIndex

log = logging.getLogger(__name__)

NLIST_MIN, NLIST_MAX = 16, 4096
TRAIN_POINTS_PER_LIST = 40  # FAISS warns below 39; k-means cost grows linearly with it
KMEANS_ITERATIONS = 5  # FAISS's IVF default is 10; nprobe is tuned on the result, so fewer only moves nprobe
# on the GPU an iteration costs ~0.06 s at 2.25M rows: 10 there. With 60,000 synthetic titles (onnx
# int8 vectors, nlist 980, the same 0.98 target) torch's k-means needed nprobe 94 / 61 / 61 after
# 5 / 10 / 20 iterations, FAISS's (5) 101; on the H200 at 2.25M rows 5 iterations needed 15, FAISS's 10
KMEANS_ITERATIONS_DEVICE = 10
TRUTH_BLOCK = 131_072  # flat vectors per block of the exact top-k (a queries x block score matrix)
ADD_CHUNK = 100_000
K = 10


def auto_nlist(rows: int) -> int:
    """Inverted lists for `rows` vectors: 4 * sqrt(rows), within [16, 4096] and at most rows / 39."""
    nlist = round(4 * math.sqrt(max(rows, 1)))
    nlist = min(max(nlist, NLIST_MIN), NLIST_MAX)
    return max(1, min(nlist, rows // 39))


def _swap_letters(title: str) -> str:
    """The title with two adjacent letters of its longest word swapped: a typo, never the stored text."""
    words = title.split()
    if not words:
        return title
    w = max(range(len(words)), key=lambda i: len(words[i]))
    word = words[w]
    if len(word) < 4:
        return f"{title} ?"
    mid = len(word) // 2
    words[w] = word[: mid - 1] + word[mid] + word[mid - 1] + word[mid + 1 :]
    return " ".join(words)


FORMS = 4


def query_texts(titles: Sequence[str]) -> list[str]:
    """One query per title, cycling through four forms a user might type, none equal to the title."""
    out = []
    for i, title in enumerate(titles):
        words = title.split()
        if i % FORMS == 1 and len(words) > 2:
            out.append(" ".join(words[:-1]))
        elif i % FORMS == 2:
            out.append(f"what is {title} about?")
        elif i % FORMS == 3:
            out.append(f"who wrote {title}?")
        else:
            out.append(_swap_letters(title))
    return out


def per_query_recall(
    found_scores: np.ndarray, found_ids: np.ndarray, truth: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Each query's share of its exact top-k found; a found row tying the k-th exact score counts."""
    true_scores, true_ids = truth
    k = true_ids.shape[1]
    out = np.zeros(len(true_ids))
    for q in range(len(true_ids)):
        exact = set(true_ids[q].tolist())
        boundary = float(true_scores[q, -1]) - 1e-5
        hits = sum(
            1
            for fid, score in zip(found_ids[q].tolist(), found_scores[q].tolist(), strict=True)
            if fid >= 0 and (fid in exact or score >= boundary)
        )
        out[q] = hits / k
    return out


def recall_at_k(
    found_scores: np.ndarray, found_ids: np.ndarray, truth: tuple[np.ndarray, np.ndarray]
) -> float:
    """Mean recall@k over the queries (see `per_query_recall`)."""
    return float(per_query_recall(found_scores, found_ids, truth).mean())


def lower_bound(recalls: np.ndarray) -> float:
    """The mean less 1.96 standard errors: the recall the index keeps on other queries, with 95% confidence."""
    if len(recalls) < 2:
        return float(recalls.mean()) if len(recalls) else 0.0
    return float(recalls.mean() - 1.96 * recalls.std(ddof=1) / np.sqrt(len(recalls)))


def tune_nprobe(
    ivf: Any, queries: np.ndarray, truth: tuple[np.ndarray, np.ndarray], target: float
) -> tuple[int, dict[int, tuple[float, float]]]:
    """The smallest nprobe whose recall@k, less 1.96 standard errors, reaches `target`.

    Returns it and {nprobe: (mean recall, lower bound)} of every value tried. nprobe = nlist searches
    every list (recall 1 for every query), so a value is always found.
    """
    k = truth[1].shape[1]
    tried: dict[int, tuple[float, float]] = {}

    def passes(nprobe: int) -> bool:
        if nprobe not in tried:
            ivf.nprobe = nprobe
            scores, ids = ivf.search(queries, k)
            recalls = per_query_recall(scores, ids, truth)
            tried[nprobe] = (float(recalls.mean()), lower_bound(recalls))
        return tried[nprobe][1] >= target

    nlist = int(ivf.nlist)
    high = 1
    while high < nlist and not passes(high):
        high *= 2
    high = min(high, nlist)
    if not passes(high):  # only possible at nprobe = nlist with float ties: take it
        return high, tried
    low = max((p for p, (_m, lb) in tried.items() if p < high and lb < target), default=0)
    while high - low > 1:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    return high, tried


def _flat_view(flat: FaissIndex) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a flat FaissIndex as numpy views of FAISS's own arrays (no copy)."""
    import faiss

    inner = faiss.downcast_index(flat.raw.index)
    n, d = int(inner.ntotal), int(inner.d)
    # downcast_index gives the concrete IndexFlat; faiss's own annotations say Index
    vectors = faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d)  # type: ignore[attr-defined]
    ids = faiss.vector_to_array(flat.raw.id_map).astype(np.int64)
    return ids, vectors


def exact_top_k(
    ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of each query's k highest inner products, best first: the flat index's search.

    One matrix product per block of `TRUTH_BLOCK` vectors and a running top-k: for 300 queries over
    300k vectors 1.9-3.0 s instead of the flat index's own search's 4.8-8.9 s on 2 cores (which
    multiplies in blocks of 1,024 vectors). Scores are the same up to float rounding; among rows of
    equal score the ids may differ, which `per_query_recall` counts as hits either way.
    """
    nq = len(queries)
    best_scores = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((nq, 0), dtype=np.int64)
    for start in range(0, len(vectors), TRUTH_BLOCK):
        scores = queries @ vectors[start : start + TRUTH_BLOCK].T
        take = min(k, scores.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        best_rows = np.concatenate([best_rows, top + start], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, 1)
            best_rows = np.take_along_axis(best_rows, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), ids[np.take_along_axis(best_rows, order, 1)]


def torch_device(device: str | None) -> Any:
    """The torch device for the GPU version of the conversion: `device` when it is CUDA and present, else None."""
    if not device or not str(device).startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; a CPU-only install still has it
        return None
    return torch.device(device) if torch.cuda.is_available() else None


ASSIGN_BLOCK = 65_536  # rows per block on the device: a block x nlist score matrix (1 GiB at 4,096 lists)


def _assign(x: Any, centroids: Any) -> Any:
    """Index of each row's highest-inner-product centroid (torch, on the device), in blocks."""
    import torch

    out = torch.empty(len(x), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), ASSIGN_BLOCK):
        out[start : start + ASSIGN_BLOCK] = (x[start : start + ASSIGN_BLOCK] @ centroids.T).argmax(dim=1)
    return out


def kmeans_torch(sample: np.ndarray, nlist: int, iterations: int, seed: int, device: Any) -> np.ndarray:
    """Spherical k-means of `sample` on `device`: `nlist` normalised centroids (float32, on the host).

    Starts from `nlist` distinct sample rows drawn with `seed`; a list left empty keeps its centroid.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(device)
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=generator)[:nlist].to(device)].clone()
    for _ in range(iterations):
        assign = _assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=nlist).to(x.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        centroids = torch.nn.functional.normalize(centroids, dim=1)
    return centroids.cpu().numpy()


def _fill_on_device(
    ivf: Any,
    centroids: np.ndarray,
    ids: np.ndarray,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    device: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the flat vectors on `device`: each block's lists (added to `ivf` with FAISS's
    `add_core`) and the running exact top-k of `queries`. Returns the exact (scores, ids), best first."""
    import faiss
    import torch

    c = torch.from_numpy(centroids).to(device)
    q = torch.from_numpy(queries).to(device)
    best_scores = torch.empty((len(q), 0), device=device)
    best_rows = torch.empty((len(q), 0), dtype=torch.int64, device=device)
    for start in range(0, len(vectors), ASSIGN_BLOCK):
        block = np.ascontiguousarray(vectors[start : start + ASSIGN_BLOCK])
        x = torch.from_numpy(block).to(device)
        lists = np.ascontiguousarray(_assign(x, c).cpu().numpy())
        block_ids = np.ascontiguousarray(ids[start : start + len(block)])
        ivf.add_core(len(block), faiss.swig_ptr(block), faiss.swig_ptr(block_ids), faiss.swig_ptr(lists))
        scores = q @ x.T
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, top.values], dim=1)
        best_rows = torch.cat([best_rows, top.indices + start], dim=1)
        if best_scores.shape[1] > k:
            keep = best_scores.topk(k, dim=1).indices
            best_scores, best_rows = best_scores.gather(1, keep), best_rows.gather(1, keep)
    order = best_scores.argsort(dim=1, descending=True, stable=True)
    scores_np = best_scores.gather(1, order).cpu().numpy()
    rows_np = best_rows.gather(1, order).cpu().numpy()
    return scores_np, ids[rows_np]


def _train_and_fill(
    nlist: int,
    sample: np.ndarray,
    ids: np.ndarray,
    vectors: np.ndarray,
    queries: np.ndarray,
    seed: int,
    device: Any,
) -> tuple[Any, tuple[np.ndarray, np.ndarray] | None, float, float]:
    """A trained IVF index holding every row, (the exact top-k of `queries` when found on the way:
    the device path; else None), training seconds, adding seconds."""
    import faiss

    dimension = vectors.shape[1]
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dimension)
    ivf = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    centroids = None
    if device is not None:
        centroids = kmeans_torch(sample, nlist, KMEANS_ITERATIONS_DEVICE, seed, device)
        quantizer.add(centroids)
        ivf.is_trained = True
    else:
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.train(sample)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    truth = None
    if centroids is not None:  # the lists and the exact top-k in one pass over the vectors
        truth = _fill_on_device(ivf, centroids, ids, vectors, queries, K, device)
    else:
        for start in range(0, len(vectors), ADD_CHUNK):
            ivf.add_with_ids(
                np.ascontiguousarray(vectors[start : start + ADD_CHUNK]), ids[start : start + ADD_CHUNK]
            )
    return ivf, truth, train_s, time.perf_counter() - t0


def sqlite_titles(meta_path: Path) -> Callable[[Sequence[int]], list[str]]:
    """`titles_of` for `finish_auto_index`: the titles of faiss ids, read from a version's meta.sqlite."""

    def titles_of(ids: Sequence[int]) -> list[str]:
        conn = sqlite3.connect(f"file:{meta_path}?mode=ro", uri=True)
        try:
            found: dict[int, str] = {}
            wanted = [int(i) for i in ids]
            for start in range(0, len(wanted), 900):
                part = wanted[start : start + 900]
                sql = f"SELECT faiss_id, title FROM rows WHERE faiss_id IN ({','.join('?' * len(part))})"
                found.update((int(fid), title) for fid, title in conn.execute(sql, part))
            return [found[i] for i in wanted if i in found]
        finally:
            conn.close()

    return titles_of


def finish_auto_index(
    flat: FaissIndex,
    index_config: Any,
    embed: Callable[[list[str]], np.ndarray],
    titles_of: Callable[[Sequence[int]], list[str]],
    *,
    seed: int = 0,
    device: Any = None,
) -> tuple[FaissIndex, dict[str, Any]]:
    """The index `index.type: auto` serves for the rows in `flat`, and the manifest's record of the choice.

    `embed(texts)` embeds the tuning queries, `titles_of(ids)` gives the titles of held-back rows
    (`sqlite_titles(meta.sqlite)` in a build). `device`: a torch device (`torch_device`) to train,
    assign and find the exact top-k on; None: FAISS on the CPU.
    """
    started = time.perf_counter()
    rows = flat.ntotal
    threshold = int(index_config.auto_ivf_min_rows)
    record: dict[str, Any] = {"rows": rows, "ivf_min_rows": threshold}
    if rows < threshold or rows == 0:
        record.update(chosen="flat", recall_at_10=1.0)
        return flat, record

    rng = np.random.default_rng(seed)
    ids, vectors = _flat_view(flat)
    n_queries = min(int(index_config.auto_tune_queries), max(1, rows // 10))
    order = rng.permutation(rows)
    held, pool = order[:n_queries], order[n_queries:]
    nlist = max(1, min(auto_nlist(rows), len(pool) // 39))  # the held-back rows are not trained on
    train_points = min(len(pool), TRAIN_POINTS_PER_LIST * nlist)
    sample = np.ascontiguousarray(vectors[np.sort(pool[:train_points])])

    t0 = time.perf_counter()
    texts = query_texts(titles_of(ids[held].tolist()))
    queries = np.ascontiguousarray(embed(texts), dtype=np.float32)
    embed_s = time.perf_counter() - t0
    ivf, truth, train_s, add_s = _train_and_fill(nlist, sample, ids, vectors, queries, seed, device)
    del sample

    t0 = time.perf_counter()
    if truth is None:
        truth = exact_top_k(ids, vectors, queries, K)
    nprobe, tried = tune_nprobe(ivf, queries, truth, float(index_config.auto_recall_target))
    recall, lower = tried[nprobe]
    tune_s = time.perf_counter() - t0 + embed_s

    params = {
        "ivf_nlist": nlist,
        "ivf_nlist_used": nlist,
        "ivf_nprobe": nprobe,
        "ivf_train_points": train_points,
    }
    chosen = FaissIndex(ivf, "ivf", flat.dimension, params)
    record.update(
        chosen="ivf",
        nlist=nlist,
        nprobe=nprobe,
        recall_at_10=round(recall, 4),
        recall_at_10_lower=round(lower, 4),
        recall_target=float(index_config.auto_recall_target),
        queries=len(texts),
        train_points=train_points,
        device=str(device) if device is not None else "cpu (faiss)",
        tried={str(p): [round(m, 4), round(lb, 4)] for p, (m, lb) in sorted(tried.items())},
        seconds={
            "train": round(train_s, 2),
            "add": round(add_s, 2),
            "tune": round(tune_s, 2),
            "total": round(time.perf_counter() - started, 2),
        },
    )
    log.info(
        "index.type auto: ivf nlist %d nprobe %d, recall@10 %.3f over %d rows", nlist, nprobe, recall, rows
    )
    return chosen, record
