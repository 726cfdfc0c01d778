"""nprobe that `index.type: auto` needs after FAISS's k-means and after the GPU path's torch k-means.

    python benchmarks/bench_ivf_kmeans.py --rows 60000 --iterations 5,10,20 --out results/bench_ivf_kmeans.json

Embeds `--rows` synthetic titles once with the default embedder (onnx int8 on a CPU; cached in
`--cache`), fills a flat index, then runs `index.autoindex.finish_auto_index` on it: once with FAISS
(the CPU path, `KMEANS_ITERATIONS`) and once per `--iterations` value with torch's k-means (the
GPU path, here on torch's CPU device: the same code as on CUDA). Each run tunes nprobe to the same
recall target on the same held-back titles, so a lower nprobe means better centroids. Prints and
writes nlist, nprobe, recall@10 and its lower bound, and the seconds per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--iterations", default="5,10,20", help="torch k-means iterations to try")
    parser.add_argument(
        "--cache", default="bench_out/ivf_kmeans_vectors.npy", help="where the vectors are kept"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    import index.autoindex as autoindex
    from index.embedder import load_embedder
    from index.vector import FaissIndex
    from rag.config import load_config
    from rag.synthetic import generate_records

    titles = [r["title"] for r in islice(generate_records(args.rows, seed=4), args.rows)]
    embedder = load_embedder(load_config().embedding)
    cache = Path(args.cache)
    if cache.exists() and len(np.load(cache, mmap_mode="r")) == len(titles):
        vectors = np.load(cache).astype(np.float32)
    else:
        t0 = time.perf_counter()
        vectors = embedder.embed(titles).astype(np.float32)
        print(f"embedded {len(titles):,} titles in {time.perf_counter() - t0:.1f}s")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors, allow_pickle=False)
    ids = np.arange(len(vectors), dtype=np.int64)
    flat = FaissIndex.create(vectors.shape[1], "flat")
    flat.add(ids, vectors)
    config = load_config(None, ["index.auto_ivf_min_rows=1000"]).index

    def titles_of(wanted):
        return [titles[int(i)] for i in wanted]

    runs = [("faiss", None, autoindex.KMEANS_ITERATIONS)]
    runs += [("torch", torch.device("cpu"), int(n)) for n in args.iterations.split(",") if n.strip()]
    results = []
    saved = autoindex.KMEANS_ITERATIONS, autoindex.KMEANS_ITERATIONS_DEVICE
    try:
        for kind, device, iterations in runs:
            autoindex.KMEANS_ITERATIONS = autoindex.KMEANS_ITERATIONS_DEVICE = iterations
            t0 = time.perf_counter()
            _index, record = autoindex.finish_auto_index(
                flat, config, embedder.embed, titles_of, device=device
            )
            row = {
                "kmeans": kind,
                "iterations": iterations,
                "nlist": record["nlist"],
                "nprobe": record["nprobe"],
                "recall_at_10": record["recall_at_10"],
                "recall_at_10_lower": record["recall_at_10_lower"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        autoindex.KMEANS_ITERATIONS, autoindex.KMEANS_ITERATIONS_DEVICE = saved
    if args.out:
        out = {
            "command": "python benchmarks/bench_ivf_kmeans.py " + " ".join(argv or sys.argv[1:]),
            "rows": args.rows,
        }
        Path(args.out).write_text(json.dumps({**out, "runs": results}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
