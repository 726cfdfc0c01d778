"""Recall@10 and latency of the approximate index (hnsw, ivf) against exact search, on MiniLM vectors.

    .venv/bin/python benchmarks/bench_index_recall.py --rows 20000
    .venv/bin/python benchmarks/bench_index_recall.py --vectors-from /tmp/bench100k/index   # reuse a built flat index
    .venv/bin/python benchmarks/bench_index_recall.py --catalog ../shared/data/amazontitles/trn_sample.jsonl

Base vectors: MiniLM embeddings of catalog titles (a synthetic catalog of --rows, a given catalog
file, or the vectors stored in an existing flat index). Queries: questions written from the titles
of randomly chosen rows ("what is <title> about?", "who made <title>?", "do you have <first words>?"),
embedded with the same model, searched one at a time as a server would. Recall@10 = share of the
exact top-10 ids that the approximate index also returns in its top 10; "ties as hits" also
counts a returned row whose score equals the exact 10th score (identical titles have identical
vectors, so the exact top-10 set is ambiguous at its boundary).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEMPLATES = (
    "what is {t} about?",
    "who made {t}?",
    "do you have {w}?",
    "tell me about {t}",
    "is {w} any good?",
    "I am looking for {w}",
)


def questions(titles: list[str], n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for title in rnd.sample(titles, min(n, len(titles))):
        words = " ".join(title.split()[:4])
        out.append(rnd.choice(TEMPLATES).format(t=title, w=words))
    return out


def recall_at(exact: np.ndarray, approx: np.ndarray, k: int) -> float:
    hits = [
        len(set(e[:k][e[:k] >= 0]) & set(a[:k][a[:k] >= 0])) / max(1, (e[:k] >= 0).sum())
        for e, a in zip(exact, approx, strict=True)
    ]
    return float(np.mean(hits))


def recall_with_ties(exact_scores: np.ndarray, approx_scores: np.ndarray, k: int, eps: float = 1e-5) -> float:
    """Share of the approximate top-k whose score reaches the exact k-th score.

    Catalogs hold rows with identical titles (series volumes, colour variants), hence identical
    vectors: the exact top-k set is then ambiguous at its boundary, and id-based recall counts an
    equally good row as a miss. FAISS returns exact inner products for flat/hnsw/ivf-flat, so
    comparing scores is sound.
    """
    kth = exact_scores[:, k - 1 : k]
    return float(np.mean(approx_scores[:, :k] >= kth - eps))


def per_query_ms(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    ids = np.zeros((len(queries), k), dtype=np.int64)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    t0 = time.perf_counter()
    for i, q in enumerate(queries):
        s, found = index.search(q.reshape(1, -1), k)
        ids[i], scores[i] = found[0], s[0]
    return ids, scores, (time.perf_counter() - t0) / len(queries) * 1000


def run(name: str, ids: np.ndarray, vectors: np.ndarray, titles: list[str], embedder, args) -> dict:
    from index.vector import FaissIndex

    qs = embedder.embed(questions(titles, args.queries, args.seed))
    dim = vectors.shape[1]
    flat = FaissIndex.create(dim, "flat")
    flat.add(ids, vectors)
    exact, exact_scores, flat_ms = per_query_ms(flat, qs, args.k)
    result = {
        "dataset": name,
        "rows": len(ids),
        "queries": len(qs),
        "flat_ms_per_query": round(flat_ms, 3),
        "hnsw": [],
        "ivf": [],
    }
    print(
        f"\n{name}: {len(ids):,} vectors (d={dim}), {len(qs)} question queries; flat {flat_ms:.2f} ms/query"
    )

    t0 = time.perf_counter()
    hnsw = FaissIndex.create(dim, "hnsw", hnsw_m=args.hnsw_m, hnsw_ef_construction=args.ef_construction)
    hnsw.add(ids, vectors)
    build_s = time.perf_counter() - t0
    result["hnsw_build_s"] = round(build_s, 2)
    print(f"  hnsw M={args.hnsw_m} efConstruction={args.ef_construction}: built in {build_s:.1f}s")
    for ef in args.ef_search:
        hnsw.apply_search_params(hnsw_ef_search=ef)
        approx, scores, ms = per_query_ms(hnsw, qs, args.k)
        r = recall_at(exact, approx, args.k)
        rt = recall_with_ties(exact_scores, scores, args.k)
        result["hnsw"].append(
            {
                "ef_search": ef,
                "recall_at_10": round(r, 4),
                "recall_at_10_ties": round(rt, 4),
                "ms_per_query": round(ms, 3),
            }
        )
        print(f"    efSearch={ef:<4} recall@{args.k}={r:.4f} (ties as hits {rt:.4f})  {ms:.3f} ms/query")

    if len(ids) >= 2000:
        nlist = max(16, min(1024, int(4 * np.sqrt(len(ids)))))
        t0 = time.perf_counter()
        ivf = FaissIndex.create(dim, "ivf", ivf_nlist=nlist, ivf_train_points=min(len(ids), 64 * nlist))
        ivf.add(ids, vectors)
        ivf.flush()
        result["ivf_build_s"] = round(time.perf_counter() - t0, 2)
        used = ivf.params.get("ivf_nlist_used", nlist)
        print(f"  ivf nlist={used}: built in {result['ivf_build_s']:.1f}s")
        for nprobe in args.nprobe:
            ivf.apply_search_params(ivf_nprobe=nprobe)
            approx, scores, ms = per_query_ms(ivf, qs, args.k)
            r = recall_at(exact, approx, args.k)
            rt = recall_with_ties(exact_scores, scores, args.k)
            result["ivf"].append(
                {
                    "nlist": used,
                    "nprobe": nprobe,
                    "recall_at_10": round(r, 4),
                    "recall_at_10_ties": round(rt, 4),
                    "ms_per_query": round(ms, 3),
                }
            )
            print(
                f"    nprobe={nprobe:<4} recall@{args.k}={r:.4f} (ties as hits {rt:.4f})  {ms:.3f} ms/query"
            )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=20_000, help="synthetic titles to embed (when no other source)"
    )
    parser.add_argument(
        "--catalog", action="append", default=[], help="catalog file(s) whose titles are embedded"
    )
    parser.add_argument(
        "--vectors-from", default=None, help="index.path of a built flat index to take vectors from"
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads (1: single-query latency as one server worker sees it)",
    )
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)

    from index.embedder import load_embedder
    from index.vector import uid_to_id
    from rag.catalog import CatalogReader
    from rag.config import load_config

    embedder = load_embedder(load_config().embedding)
    results = []
    if args.vectors_from:
        from index.store import IndexStore

        snap = IndexStore(args.vectors_from).open_current(checksums=False)
        if snap.embedding_model != embedder.name or snap.index.type != "flat":
            raise SystemExit(f"{args.vectors_from}: need a flat index built with {embedder.name}")
        ids, vectors = snap.index.export()
        titles = [row.title for row in snap.iter_rows()]
        results.append(run(f"index {snap.version}", ids, vectors, titles, embedder, args))
    sources = [Path(c) for c in args.catalog]
    if not args.vectors_from and not sources:
        import tempfile

        from rag.synthetic import write_synthetic_catalog

        sources = [
            write_synthetic_catalog(
                Path(tempfile.mkdtemp()) / "synthetic.jsonl", rows=args.rows, seed=args.seed
            )
        ]
    for source in sources:
        rows = list(CatalogReader(load_config().catalog).iter_rows([source]))
        titles = [r.title for r in rows]
        t0 = time.perf_counter()
        vectors = embedder.embed(titles)
        print(f"embedded {len(titles):,} titles of {source.name} in {time.perf_counter() - t0:.1f}s")
        ids = np.array([uid_to_id(r.uid) for r in rows], dtype=np.int64)
        results.append(run(source.name, ids, vectors, titles, embedder, args))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
