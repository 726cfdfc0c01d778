"""Benchmark: query latency (query embedding + FAISS search) at 1.3M rows, flat vs hnsw vs ivf, recall@10 vs exact.

    .venv/bin/python benchmarks/bench_latency_1m.py --out results/bench_latency_1m.json
    .venv/bin/python benchmarks/bench_latency_1m.py --rows 200000 --real 5000 --types flat,hnsw --ef 32,64   # quick
    timeout 3000 .venv/bin/python benchmarks/bench_latency_1m.py --threads 2 --out results/bench_latency_1m.json &

What it does, exactly:
1. Embeds the titles of the first `--real` rows (default 20,000) of the deterministic synthetic catalog
   (`rag.synthetic.generate_records`, real-length titles) with the configured embedder (default here:
   `embedding.backend=onnx`, int8 MiniLM); cached as .npy under `--cache-dir`.
2. Builds `--rows` (default 1,300,000) vectors: the real ones, then copies `normalise(v + N(0, noise^2 I))`
   (default noise 0.03 per dimension: cosine ~0.86 to the original, so copies spread around each title
   instead of stacking on it; with 0.01 they form tight clusters of ~65 near-identical vectors whose order
   no approximate index can reproduce). The index has the size and dimension of the real catalog; only the
   first `--real` rows are real titles.
3. Queries: `--queries` (default 200) question-style texts about random real titles ("What is <title>
   about?", the title with a typo, "who wrote <title>?"), embedded for real, one at a time, uncached.
   Ground truth is exact inner-product search (IndexFlatIP) over the same vectors; recall@10 of an
   approximate index is |its top-10 ∩ exact top-10| / 10, averaged.
4. For each index type: build time, then p50/p95 of embed, search and embed+search per query (single
   query, as a request does), for every efSearch (hnsw) or nprobe (ivf) value; the queries are
   embedded again right before each index's searches, so both halves of the total see the same load. `auto` is the default
   `index.type` (index/autoindex.py): flat below `index.auto_ivf_min_rows`, else ivf with nlist from the
   row count and nprobe tuned on 300 held-back titles (a noisy copy's title is its original's); its
   build time includes training, adding and tuning, and its queries are measured at the tuned nprobe.

The defaults at 1.3M rows (issue 16: p50 <= 10 ms with the query embedding, recall@10 >= 0.97):

    timeout 3000 .venv/bin/python benchmarks/bench_latency_1m.py --types auto --out results/bench_latency_1m_auto.json

Prints the machine (CPU, cores, load average, versions) and writes JSON for benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import embed_cached, latency_percentiles, synthetic_titles, write_result
from rag.config import load_config
from rag.evaluation.metrics import percentile
from rag.evaluation.questions import typo_title
from rag.evaluation.runner import environment, environment_line


def tiled(base: np.ndarray, rows: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, base.shape[1]), dtype=np.float32)
    n = len(base)
    out[:n] = base[:rows]
    for start in range(n, rows, 100_000):
        stop = min(start + 100_000, rows)
        block = base[np.arange(start, stop) % n] + rng.normal(
            0.0, noise, size=(stop - start, base.shape[1])
        ).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def questions(titles: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for q in range(count):
        title = titles[rng.randrange(len(titles))]
        out.append([f"What is {title} about?", typo_title(title, seed=q), f"who wrote {title}?"][q % 3])
    return out


def embed_queries(embedder: Any, texts: list[str], warmup: int) -> tuple[np.ndarray, list[float]]:
    """Each query embedded alone, as a request does (int8 activations are scaled per batch, so a query
    embedded inside a batch differs slightly: the ground truth must use these very vectors)."""
    for text in texts[:warmup]:
        embedder.embed([text])
    vectors, ms = [], []
    for text in texts[warmup:]:
        t0 = time.perf_counter()
        vectors.append(embedder.embed([text])[0])
        ms.append((time.perf_counter() - t0) * 1e3)
    return np.stack(vectors), ms


def timed_search(index: Any, qvec: np.ndarray, embed_ms: list[float], k: int, warmup: int) -> dict[str, Any]:
    for vector in qvec[:warmup]:
        index.search(vector.reshape(1, -1), k)
    search_ms, ids_all = [], []
    for vector in qvec:
        t0 = time.perf_counter()
        _s, ids = index.search(vector.reshape(1, -1), k)
        search_ms.append((time.perf_counter() - t0) * 1e3)
        ids_all.append(ids[0])
    total_ms = [
        e + s for e, s in zip(embed_ms, search_ms, strict=True)
    ]  # the query's own embedding + its search
    return {
        **latency_percentiles(embed=embed_ms, search=search_ms, total=total_ms),
        "ids": np.stack(ids_all),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_300_000)
    parser.add_argument(
        "--real", type=int, default=20_000, help="titles embedded for real (the rest are noisy copies)"
    )
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--types",
        default="flat,ivf,hnsw",
        help="comma-separated: flat, ivf, hnsw, auto (the default `index.type`: flat or a tuned ivf, "
        "chosen as `rag index build` does with the config's index.auto_* settings)",
    )
    parser.add_argument("--ef", default="16,32,64,128", help="hnsw efSearch values")
    parser.add_argument("--nprobe", default="8,16,32,64", help="ivf nprobe values")
    parser.add_argument(
        "--auto-nprobe",
        default="",
        help="auto, when it chose ivf: also measure these nprobe values (e.g. 8,16)",
    )
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="embedding threads (default: all cores)")
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads while searching (1: a single query gains nothing from more, "
        "and on a busy machine OpenMP barriers cost ms); the build uses all cores",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides (default embedding.backend=onnx)",
    )
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "amazontitles-rag" / "bench"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import faiss

    from index.embedder import load_embedder
    from index.vector import FaissIndex

    overrides = ["embedding.backend=onnx", "embedding.cache_size=0", *args.overrides]
    if args.threads:
        overrides.append(f"embedding.num_threads={args.threads}")
    config = load_config(None, overrides)
    env = environment()
    env["threads"] = args.threads or env.get("cores")
    env["faiss_search_threads"] = args.faiss_threads
    print(environment_line(env) + f", threads {env['threads']}", flush=True)
    embedder = load_embedder(config.embedding)
    ec = config.embedding
    label = f"{ec.model} backend={ec.backend}" + (f" {ec.onnx_quantize}" if ec.backend == "onnx" else "")

    titles = synthetic_titles(args.real, args.seed)
    safe = "".join(c if c.isalnum() else "_" for c in label)
    cache = Path(args.cache_dir) / f"titles_{safe}_{args.real}_{args.seed}.npy"
    base, embed_info = embed_cached(embedder, titles, cache, progress=False)
    if not embed_info["cached"]:
        seconds = embed_info["seconds"]
        print(
            f"embedded {len(titles):,} titles in {seconds:.1f} s ({len(titles) / seconds:.0f}/s)", flush=True
        )
    vectors = tiled(base, args.rows, args.noise, args.seed)
    ids = np.arange(args.rows, dtype=np.int64)
    texts = questions(titles, args.queries + args.warmup, args.seed + 1)
    qvec, embed_ms = embed_queries(embedder, texts, args.warmup)
    print(
        f"query embedding alone: p50 {percentile(embed_ms, 50):.2f} ms, p95 {percentile(embed_ms, 95):.2f} ms",
        flush=True,
    )

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    _s, truth = exact.search(qvec, args.k)
    print(f"exact ground truth for {len(qvec)} queries in {time.perf_counter() - t0:.1f} s", flush=True)
    del exact

    results: list[dict[str, Any]] = []

    def record(name: str, index: FaissIndex, build_s: float, param: dict[str, Any]) -> None:
        # the queries are embedded again, alone, right before their searches: on a shared machine the
        # embedding's share of the total must see the same load as the search's (same vectors: checked)
        again, embed_now = embed_queries(embedder, texts, args.warmup)
        if not np.allclose(again, qvec, atol=1e-5):
            raise RuntimeError(
                "re-embedding the queries gave other vectors; the ground truth would not match"
            )
        row = timed_search(index, qvec, embed_now, args.k, args.warmup)
        found = row.pop("ids")
        recall = float(np.mean([len(set(found[i]) & set(truth[i])) / args.k for i in range(len(truth))]))
        row.update(
            {
                "rows": args.rows,
                "index_type": name,
                **param,
                "build_s": round(build_s, 1),
                f"recall@{args.k}_vs_exact": recall,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
        results.append(row)
        print(
            f"{name} {param}: total p50 {row['total_p50_ms']:.2f} ms p95 {row['total_p95_ms']:.2f} "
            f"(embed p50 {row['embed_p50_ms']:.2f}, search p50 {row['search_p50_ms']:.2f}), "
            f"recall@{args.k} {recall:.3f}, load {row['load_average'][0]}",
            flush=True,
        )
        if args.out:  # write after every row: a timed-out run keeps what it measured
            write(args.out, env, label, embed_info, args, results)

    for name in [t.strip() for t in args.types.split(",") if t.strip()]:
        if name == "auto":  # what `rag index build` does by default: flat filled, then index/autoindex.py
            from index.autoindex import finish_auto_index

            flat = FaissIndex.create(vectors.shape[1], "flat")
            t0 = time.perf_counter()
            for start in range(0, args.rows, 100_000):
                flat.add(ids[start : start + 100_000], vectors[start : start + 100_000])
            index, auto = finish_auto_index(
                flat,
                config.index,
                lambda texts: embedder.embed(texts, progress=False),
                lambda wanted: [
                    titles[int(i) % len(titles)] for i in wanted
                ],  # a copy's title: its original's
                seed=args.seed,
            )
            del flat
            build_s = time.perf_counter() - t0
            faiss.omp_set_num_threads(args.faiss_threads)
            print(f"built auto over {args.rows:,} rows in {build_s:.0f} s: {json.dumps(auto)}", flush=True)
            param = {"chosen": auto["chosen"], "nlist": auto.get("nlist"), "nprobe": auto.get("nprobe")}
            record(name, index, build_s, {**param, "tuned_recall@10": auto.get("recall_at_10")})
            if auto["chosen"] == "ivf" and args.auto_nprobe:  # the same index at other nprobe values
                for nprobe in [int(x) for x in args.auto_nprobe.split(",")]:
                    index.apply_search_params(ivf_nprobe=nprobe)
                    record(name, index, build_s, {**param, "nprobe": nprobe, "tuned": False})
            del index
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            continue
        params: dict[str, Any] = {
            "hnsw_m": args.hnsw_m,
            "hnsw_ef_construction": args.ef_construction,
            "ivf_nlist": args.nlist,
            "ivf_train_points": 64 * args.nlist,
        }
        index = FaissIndex.create(vectors.shape[1], name, **params)
        t0 = time.perf_counter()
        for start in range(0, args.rows, 100_000):
            index.add(ids[start : start + 100_000], vectors[start : start + 100_000])
        index.flush()
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(args.faiss_threads)
        print(f"built {name} over {args.rows:,} rows in {build_s:.0f} s", flush=True)
        if name == "hnsw":
            for ef in [int(x) for x in args.ef.split(",")]:
                index.apply_search_params(hnsw_ef_search=ef)
                record(
                    name,
                    index,
                    build_s,
                    {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": ef},
                )
        elif name == "ivf":
            for nprobe in [int(x) for x in args.nprobe.split(",")]:
                index.apply_search_params(ivf_nprobe=nprobe)
                record(name, index, build_s, {"nlist": index.params.get("ivf_nlist_used"), "nprobe": nprobe})
        else:
            record(name, index, build_s, {})
        del index
        faiss.omp_set_num_threads(os.cpu_count() or 1)
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        write(args.out, env, label, embed_info, args, results)
    print(f"load average at the end: {env['load_average_end']}")
    return 0


def write(
    out: str,
    env: dict[str, Any],
    label: str,
    embed_info: dict[str, Any],
    args: argparse.Namespace,
    results: list[dict[str, Any]],
) -> None:
    payload = {
        "benchmark": "latency_1m",
        "environment": env,
        "embedding": label,
        "embed_titles": embed_info,
        "rows": args.rows,
        "real_vectors": args.real,
        "noise": args.noise,
        "k": args.k,
        "queries": args.queries,
        "results": results,
    }
    write_result(out, payload, announce=False)


if __name__ == "__main__":
    sys.exit(main())
