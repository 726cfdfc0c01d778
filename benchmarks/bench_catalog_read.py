"""Benchmark: write a synthetic catalog, then stream it through CatalogReader; report speed and memory.

    .venv/bin/python benchmarks/bench_catalog_read.py                      # 1,000,000 rows in a temp dir
    .venv/bin/python benchmarks/bench_catalog_read.py --rows 1300000 --gz  # gzip input
    .venv/bin/python benchmarks/bench_catalog_read.py --data trn.json.gz   # an existing file, no generation

Prints the machine (platform, Python, CPU count), the generator's rows/s, the reader's rows/s and MB/s,
the read summary, and the process's peak RSS (resource.getrusage ru_maxrss) after each phase. The
reader must keep peak RSS under 1 GiB for 1M rows: it streams, and only the uid -> line map of the
duplicate check grows with the file. The rows are counted and dropped, as `rag index build` does in batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import peak_rss_mib
from rag.catalog import CatalogReader
from rag.config import CatalogConfig
from rag.synthetic import write_synthetic_catalog


def machine() -> str:
    return (
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"processor {platform.processor() or platform.machine()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="synthetic rows to generate (default 1,000,000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gz", action="store_true", help="generate gzip-compressed JSON lines")
    parser.add_argument("--data", type=Path, help="read this catalog file instead of generating one")
    parser.add_argument("--policy", default="keep_first", choices=["keep_first", "keep_last", "reject"])
    parser.add_argument("--progress", action="store_true", help="show the reader's progress bar")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)

    results: dict[str, object] = {"machine": machine()}
    print(f"machine: {results['machine']}")
    with tempfile.TemporaryDirectory(prefix="bench_catalog_") as tmp:
        if args.data is None:
            path = Path(tmp) / ("synthetic.jsonl.gz" if args.gz else "synthetic.jsonl")
            started = time.perf_counter()
            write_synthetic_catalog(path, rows=args.rows, seed=args.seed)
            seconds = time.perf_counter() - started
            results.update(
                generate_rows=args.rows,
                generate_s=round(seconds, 2),
                generate_rows_per_s=round(args.rows / seconds),
                file_mib=round(path.stat().st_size / 2**20, 1),
                rss_after_generate_mib=round(peak_rss_mib(), 1),
            )
            print(
                f"generate: {args.rows:,} rows in {seconds:.1f} s = {args.rows / seconds:,.0f} rows/s, "
                f"{path.stat().st_size / 2**20:,.1f} MiB ({path.name}); peak RSS so far {peak_rss_mib():,.0f} MiB"
            )
        else:
            path = args.data
        reader = CatalogReader(
            CatalogConfig(duplicate_policy=args.policy), rejects_path=Path(tmp) / "rejects.jsonl"
        )
        started = time.perf_counter()
        count = 0
        for _row in reader.iter_rows([path], progress=args.progress):
            count += 1
        seconds = time.perf_counter() - started
        size_mib = path.stat().st_size / 2**20
        results.update(
            read_rows=count,
            read_s=round(seconds, 2),
            read_rows_per_s=round(count / seconds),
            read_mib_per_s=round(size_mib / seconds, 1),
            peak_rss_mib=round(peak_rss_mib(), 1),
            summary=reader.summary.to_dict(),
        )
        print(
            f"read: {reader.summary.read:,} lines -> {count:,} rows in {seconds:.1f} s = {count / seconds:,.0f} rows/s, "
            f"{size_mib / seconds:,.1f} MiB/s ({args.policy})"
        )
        print(f"summary: {reader.summary.summary()}")
        print(f"peak RSS: {peak_rss_mib():,.0f} MiB (limit 1024 MiB)")
    if args.json:
        print(json.dumps(results))
    return 0 if peak_rss_mib() < 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
