"""Benchmark: the CPU-side stages of `rag index build` (reading, SQLite, FAISS, auto IVF, BM25, manifest).

    .venv/bin/rag synth --rows 300000 --out /tmp/synth_300k.jsonl
    .venv/bin/rag index distill-static --set embedding.static_pca_dims=0          # once: 384-d vectors
    .venv/bin/python benchmarks/bench_build_stages.py --data /tmp/synth_300k.jsonl --out results/x.json
    .venv/bin/python benchmarks/bench_build_stages.py --data ... --code /tmp/old-checkout   # before/after

On the GPU the whole-catalog build is bound by its CPU-side stages (results/gpu_build/h200_2250k.json).
This runs `index.build.build_index` in-process with an embedder that stands in for the GPU, so that a
CPU machine measures those stages and not the embedding:

* the vectors are the static backend's (`embedding.backend: static`, 384 dimensions with
  `static_pca_dims=0`), embedded once and cached next to the data file (`<data>.static384.npy`), so
  k-means, nprobe tuning and recall see real title vectors;
* each embed call sleeps (the GIL released, as in a CUDA call) until `--rate` titles/s (default
  50,000: the H200 run's embedding stage) is reached, and it has the bulk embedder's `chunk_rows`
  (`--bulk-chunk-rows`, default 32,768 as on CUDA), so the build hands it calls of the same size;
* `--chunk-rows 1024 --bulk-chunk-rows 4096` scales the pipeline down with the catalog: 300,000 rows
  then make 9 embed calls of 32,768 titles, with the SQLite hand-off queue a quarter of a call, as
  2.25M rows make 9 calls of 262,144 with the defaults;
* texts not in the table (the auto index's tuning queries) are embedded by the static model itself.

`--code DIR` imports `index` and `rag` from another checkout (e.g. `git archive <commit> | tar -x -C
DIR`), so the same script times the code before and after a change. Prints the stage times, the auto
index's choice and the load average; `--out` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class TableEmbedder:
    """Looks titles up in a precomputed vector table and sleeps to `rate` titles/s (a GPU stand-in)."""

    def __init__(
        self, table: dict[str, int], vectors: np.ndarray, fallback: Any, rate: float, chunk_rows: int
    ):
        self.table, self.vectors, self.fallback = table, vectors, fallback
        self.rate, self.chunk_rows = float(rate), int(chunk_rows)
        self.name, self.dimension = f"table:{fallback.name}", int(vectors.shape[1])
        self.calls = 0

    def embed(self, texts: Any, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        started = time.perf_counter()
        rows = [self.table.get(t, -1) for t in texts]
        out = self.vectors[np.maximum(np.asarray(rows, dtype=np.int64), 0)]
        missing = [i for i, r in enumerate(rows) if r < 0]
        if missing:
            out[missing] = self.fallback.embed([texts[i] for i in missing])
        self.calls += 1
        left = len(texts) / self.rate - (time.perf_counter() - started)
        if left > 0 and len(texts) >= 1000:  # the bulk calls, not the few tuning queries
            time.sleep(left)
        return out


def _vector_table(data: Path, config: Any, static: Any) -> tuple[dict[str, int], np.ndarray]:
    """title -> row of the cached static vectors of every cleaned title in `data` (made once)."""
    from rag.catalog import CatalogReader

    cache = data.with_name(data.name + f".static{static.dimension}")
    if (cache / "vectors.npy").exists():
        titles = json.loads((cache / "titles.json").read_text(encoding="utf-8"))
        vectors = np.load(cache / "vectors.npy")
    else:
        t0 = time.perf_counter()
        seen: dict[str, None] = {}
        for row in CatalogReader(config.catalog).iter_rows([data]):
            seen.setdefault(row.title, None)
        titles = list(seen)
        vectors = static.embed(titles)
        cache.mkdir(exist_ok=True)
        np.save(cache / "vectors.npy", vectors)
        (cache / "titles.json").write_text(json.dumps(titles), encoding="utf-8")
        print(f"embedded {len(titles):,} titles once in {time.perf_counter() - t0:.1f}s into {cache}")
    return {t: i for i, t in enumerate(titles)}, vectors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout to import index/ and rag/ from")
    parser.add_argument("--rate", type=float, default=50_000, help="stand-in embedding rate, titles/s")
    parser.add_argument("--bulk-chunk-rows", type=int, default=32_768)
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="index.build.CHUNK_ROWS (8192): with --bulk-chunk-rows, the scale of the pipeline's chunks",
    )
    parser.add_argument("--index", type=Path, default=None, help="index root (default: a temporary dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.code.resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import index.build
    from index.build import build_index
    from index.embedder import load_embedder
    from rag.config import load_config

    if args.chunk_rows:
        index.build.CHUNK_ROWS = args.chunk_rows
    root = args.index or Path(tempfile.mkdtemp(prefix="bench_build_"))
    config = load_config(
        None,
        [
            f"index.path={root}",
            "embedding.backend=static",
            "embedding.static_pca_dims=0",
            *args.set,
        ],
    )
    static = load_embedder(config.embedding)
    table, vectors = _vector_table(args.data, config, static)
    embedder = TableEmbedder(table, vectors, static, args.rate, args.bulk_chunk_rows)
    load_before = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    report = build_index(config, [args.data], progress=False, embedder=embedder)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # this process, all threads
    load_after = os.getloadavg()
    manifest = json.loads((Path(report.path) / "manifest.json").read_text(encoding="utf-8"))
    auto = manifest["index"].get("auto", {})
    result = {
        "label": args.label,
        "code": str(args.code),
        "rows": report.rows,
        "build_s": round(wall, 2),
        "build_cpu_s": round(cpu_s, 2),
        "stages_s": report.stages,
        "auto": {
            k: auto.get(k)
            for k in (
                "chosen",
                "nlist",
                "nprobe",
                "recall_at_10",
                "recall_at_10_lower",
                "train_points",
                "tried",
                "seconds",
            )
        },
        "stand_in_rate": args.rate,
        "bulk_chunk_rows": args.bulk_chunk_rows,
        "chunk_rows": index.build.CHUNK_ROWS,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    print(report.summary())
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "label",
                    "build_s",
                    "build_cpu_s",
                    "auto",
                    "load_average_before",
                    "load_average_after",
                )
            }
        )
    )
    if args.out:
        sys.path.insert(0, str(ROOT))
        from benchmarks.common import write_result

        write_result(args.out, result)
    if args.index is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
