"""Benchmark: retrieval latency (query embedding + FAISS search) at 10k, 100k and 1.3M rows on CPU.

    .venv/bin/python benchmarks/bench_query.py                                # 10k, 100k, 1.3M; flat index
    .venv/bin/python benchmarks/bench_query.py --scales 10000 --embed-rows 10000 --queries 50   # quick check
    .venv/bin/python benchmarks/bench_query.py --index-types flat,hnsw --out results/bench_query.json
    rag bench query -- --scales 10000,100000

What it does, exactly:
1. Takes the titles of the first `--embed-rows` (default 100,000) rows of the deterministic synthetic
   catalog (`rag.synthetic.generate_records`, real-length titles) and embeds them with the real
   model (`embedding.model`, by default the bundled all-MiniLM-L6-v2) - the embedding throughput is
   reported. Vectors are cached as .npy under `--cache-dir` so reruns skip this step.
2. For a scale up to `--embed-rows` the index holds the first `scale` real vectors. Above it
   (1.3M) embedding every title with MiniLM on 2 cores would take ~35 minutes, so the real vectors
   are tiled: copy c > 0 of vector v is `normalise(v + N(0, noise^2 I))` (default noise 0.01 per
   dimension, cosine to the original ~0.98), until `scale` vectors exist. The index therefore has the
   size, dimension and near-duplicate density of a real 1.3M-row index; the vectors are not real titles.
3. Builds each index with the index package (`index.vector.FaissIndex`, the same class `rag index build`
   writes; ids are row numbers) and asks `--queries` questions ("What is <title> about?", the exact
   title, or a title with a typo) about random indexed titles. Every query is embedded with the REAL
   model, uncached, then searched (top `--k`). Per-query embed, search and total latency are timed
   after `--warmup` untimed queries; p50/p95 are reported, with "hit@k" (the asked row among the top
   k) as a sanity check that the search is doing real work.

This measures the vector path of retrieval. The full `Retriever.search` adds the SQLite row lookup,
title fusion and the description index; `rag eval retrieval` reports that end to end (p50/p95 ms column).
Prints the machine (CPU model, cores, RAM, python/torch/faiss versions); `--out` writes JSON for
`benchmarks/report.py`.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import embed_cached, latency_percentiles, peak_rss_mib, synthetic_titles, write_result
from rag.config import load_config
from rag.evaluation.questions import typo_title
from rag.evaluation.runner import environment, environment_line


def tiled_vectors(base: np.ndarray, rows: int, noise: float, seed: int, chunk: int = 100_000):
    """Yield (ids, vectors) chunks: the base vectors, then perturbed, re-normalised copies up to `rows`."""
    rng = np.random.default_rng(seed)
    n = base.shape[0]
    start = 0
    while start < rows:
        stop = min(start + chunk, rows)
        idx = np.arange(start, stop)
        block = base[idx % n].copy()
        copies = idx >= n
        if copies.any():
            block[copies] += rng.normal(0.0, noise, size=(int(copies.sum()), base.shape[1])).astype(
                np.float32
            )
            block[copies] /= np.linalg.norm(block[copies], axis=1, keepdims=True)
        yield idx.astype(np.int64), block
        start = stop


def make_queries(titles: list[str], count: int, seed: int, indexed: int) -> list[tuple[str, int]]:
    """`count` questions about random rows among the first `indexed` (the rows that carry real titles)."""
    rng = random.Random(seed)
    queries = []
    for q in range(count):
        row = rng.randrange(min(indexed, len(titles)))
        title = titles[row]
        style = q % 3
        text = f"What is {title} about?" if style == 0 else title if style == 1 else typo_title(title, seed=q)
        queries.append((text, row))
    return queries


def bench_scale(
    config: Any,
    embedder: Any,
    base: np.ndarray,
    scale: int,
    index_type: str,
    queries: list[tuple[str, int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from index.vector import FaissIndex

    config.index.type = index_type
    index = FaissIndex.from_config(base.shape[1], config.index)
    started = time.perf_counter()
    for ids, vectors in tiled_vectors(base, scale, args.noise, args.seed):
        index.add(ids, vectors)
    if hasattr(index, "flush"):
        index.flush()
    build_s = time.perf_counter() - started
    for text, _row in queries[: args.warmup]:
        index.search(np.asarray(embedder.embed([text]), dtype=np.float32), args.k)
    embed_ms, search_ms, total_ms, hits = [], [], [], 0
    for text, row in queries[args.warmup :]:
        t0 = time.perf_counter()
        vector = np.asarray(embedder.embed([text]), dtype=np.float32).reshape(1, -1)
        t1 = time.perf_counter()
        _scores, ids = index.search(vector, args.k)
        t2 = time.perf_counter()
        embed_ms.append((t1 - t0) * 1000)
        search_ms.append((t2 - t1) * 1000)
        total_ms.append((t2 - t0) * 1000)
        hits += int(row in {int(i) for i in ids[0]})
    n = len(total_ms)
    result = {
        "rows": scale,
        "index_type": index_type,
        "real_vectors": min(scale, base.shape[0]),
        "tiled_vectors": max(0, scale - base.shape[0]),
        "build_s": build_s,
        "queries": n,
        **latency_percentiles(embed=embed_ms, search=search_ms, total=total_ms),
        f"hit@{args.k}": hits / n if n else math.nan,
        "peak_rss_mib": peak_rss_mib(),
        "vector_mib": scale * base.shape[1] * 4 / 2**20,
    }
    del index
    return result


def table(results: list[dict[str, Any]], k: int) -> str:
    head = [
        "rows",
        "index",
        "real / tiled vectors",
        "build s",
        "embed p50/p95 ms",
        "search p50/p95 ms",
        "total p50/p95 ms",
        f"hit@{k}",
        "peak RSS MiB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    lines.extend(
        "| "
        + " | ".join(
            [
                f"{r['rows']:,}",
                r["index_type"],
                f"{r['real_vectors']:,} / {r['tiled_vectors']:,}",
                f"{r['build_s']:.1f}",
                f"{r['embed_p50_ms']:.1f} / {r['embed_p95_ms']:.1f}",
                f"{r['search_p50_ms']:.2f} / {r['search_p95_ms']:.2f}",
                f"{r['total_p50_ms']:.1f} / {r['total_p95_ms']:.1f}",
                f"{r[f'hit@{k}']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
            ]
        )
        + " |"
        for r in results
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", default="10000,100000,1300000", help="comma-separated row counts")
    parser.add_argument("--embed-rows", type=int, default=100_000, help="titles embedded with the real model")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--index-types", default="flat", help="comma-separated: flat, hnsw, ivf")
    parser.add_argument(
        "--noise", type=float, default=0.01, help="std of the per-dimension noise of tiled copies"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and FAISS threads (default: all cores)"
    )
    parser.add_argument("--config", default=None, help="YAML config (embedding model, index params)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "amazontitles-rag" / "bench"),
        help="where the embedded title vectors are cached (.npy)",
    )
    parser.add_argument(
        "--out", default=None, help="write the figures as JSON (e.g. results/bench_query.json)"
    )
    args = parser.parse_args(argv)

    scales = [int(s) for s in args.scales.split(",") if s.strip()]
    if any(s <= 0 for s in scales):
        parser.error("--scales: every row count must be > 0")
    config = load_config(
        args.config, [*args.overrides, "embedding.cache_size=0"]
    )  # time every query embedding
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    from index.embedder import load_embedder

    env = environment()
    env["threads"] = args.threads or env.get("cores")
    env["load_average_end"] = None
    print(environment_line(env) + f", threads {env['threads']}", flush=True)
    embed_rows = min(args.embed_rows, max(scales))
    t0 = time.perf_counter()
    titles = synthetic_titles(embed_rows, args.seed)
    print(
        f"generated {len(titles):,} synthetic titles in {time.perf_counter() - t0:.1f} s "
        f"(mean {sum(map(len, titles)) / len(titles):.0f} characters)",
        flush=True,
    )
    embedder = load_embedder(config.embedding)
    safe_model = "".join(ch if ch.isalnum() else "_" for ch in config.embedding.model)
    cache = (
        Path(args.cache_dir) / f"titles_{safe_model}_{embed_rows}_{args.seed}.npy" if args.cache_dir else None
    )
    base, embed_info = embed_cached(
        embedder, titles, cache, batch_size=config.embedding.batch_size, progress=True
    )
    if embed_info.get("cached"):
        print(f"title vectors: {base.shape} from the cache {cache}", flush=True)
    else:
        print(
            f"embedded {len(titles):,} titles with {config.embedding.model} in {embed_info['seconds']:.1f} s "
            f"({embed_info['titles_per_s']:.0f} titles/s)",
            flush=True,
        )
    results = []
    for index_type in [t.strip() for t in args.index_types.split(",") if t.strip()]:
        for scale in scales:
            queries = make_queries(titles, args.queries + args.warmup, args.seed + 1, indexed=scale)
            result = bench_scale(config, embedder, base, scale, index_type, queries, args)
            results.append(result)
            print(
                f"{scale:>9,} rows {index_type}: total p50 {result['total_p50_ms']:.1f} ms, p95 "
                f"{result['total_p95_ms']:.1f} ms (search p50 {result['search_p50_ms']:.2f} ms), "
                f"build {result['build_s']:.1f} s",
                flush=True,
            )
    print()
    print(table(results, args.k))
    if any(r["tiled_vectors"] for r in results):
        print(
            f"\nRows above {base.shape[0]:,} are perturbed copies of the {base.shape[0]:,} real title vectors "
            f"(noise {args.noise} per dimension, re-normalised); query vectors are always real model embeddings."
        )
    try:
        import os

        env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        print(
            f"load average at the end: {env['load_average_end'][0]} (other work on the machine inflates latency)"
        )
    except OSError:  # pragma: no cover
        pass
    if args.out:
        payload = {
            "benchmark": "query",
            "environment": env,
            "embedding_model": config.embedding.model,
            "embed_rows": base.shape[0],
            "embedding": embed_info,
            "noise": args.noise,
            "k": args.k,
            "results": results,
        }
        write_result(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
