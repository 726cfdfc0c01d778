"""Full build vs incremental update of the index, with the real MiniLM embedder.

    .venv/bin/python benchmarks/bench_index_update.py                      # 100k rows, update 1%
    .venv/bin/python benchmarks/bench_index_update.py --rows 5000 --embedder hashing:64   # mechanics only

Writes a synthetic catalog (rag.synthetic), builds an index from it (timing the build, titles/s of
the embedding step and the peak RSS), then updates 1% of the rows with changed titles (all of
them re-embedded) plus 0.1% deletions, and prints both times, their ratio and the machine.
Also times `verify` (sha256 of every file). Output: a human summary and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                               "platform": platform.platform(), "load_avg_start": os.getloadavg()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--update-fraction", type=float, default=0.01)
    parser.add_argument("--delete-fraction", type=float, default=0.001)
    parser.add_argument("--embedder", default="bundled:all-MiniLM-L6-v2", help="embedding.model (hashing:64 for mechanics only)")
    parser.add_argument("--type", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--workdir", default=None, help="keep the catalog and index here (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    from index.build import build_index, update_index
    from index.embedder import load_embedder
    from index.store import IndexStore
    from rag.config import load_config
    from rag.synthetic import write_synthetic_catalog

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_index_update_"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    config = load_config(None, [f"index.path={work / 'index'}", f"embedding.model={args.embedder}",
                                f"index.type={args.type}", "index.descriptions=false", "index.keep_versions=0",
                                f"embedding.batch_size={args.batch_size}"])
    catalog = work / "catalog.jsonl"
    if not catalog.exists():
        write_synthetic_catalog(catalog, rows=args.rows, seed=0)

    t0 = time.perf_counter()
    embedder = load_embedder(config.embedding)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mb()

    print(f"building {args.rows:,} rows with {embedder.name} ({args.type}) in {work} ...", flush=True)
    build = build_index(config, [catalog], progress=False, embedder=embedder)
    rss_after_build = peak_rss_mb()
    print(build.summary(), flush=True)

    # 1% of the rows get a new title (re-embedded), 0.1% are deleted
    every = max(1, round(1 / args.update_fraction))
    delete_every = max(1, round(1 / args.delete_fraction)) if args.delete_fraction > 0 else 0
    changed, deletes = [], []
    # read back the catalog file itself (not the generator), so the update matches what was built
    with open(catalog, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    for i, record in enumerate(records):
        if i % every == every // 2:
            changed.append({**record, "title": (record.get("title") or "") + " (Revised Edition)"})
        elif delete_every and i % delete_every == 1 and record.get("uid"):
            deletes.append(record["uid"])
    update_file = work / "update.jsonl"
    with open(update_file, "w", encoding="utf-8") as fh:
        for record in changed:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    print(f"updating {len(changed):,} changed rows + {len(deletes):,} deletions ...", flush=True)
    update = update_index(config, [update_file], deletes, progress=False, embedder=embedder)
    print(update.summary(), flush=True)

    store = IndexStore.from_config(config)
    verify = store.verify()
    vdir = store.version_dir(update.version)
    sizes = {p.name: p.stat().st_size for p in vdir.iterdir()}
    t0 = time.perf_counter()
    snap = store.open_current(checksums=False)
    open_sizes_s = time.perf_counter() - t0
    snap.close()
    t0 = time.perf_counter()
    snap = store.open_current(checksums=True)
    open_sha_s = time.perf_counter() - t0
    snap.close()

    result = {
        "machine": {**info, "load_avg_end": os.getloadavg()},
        "rows_indexed": build.rows,
        "embedder": embedder.name,
        "index_type": args.type,
        "model_load_s": round(load_s, 2),
        "build_s": round(build.seconds, 2),
        "build_embed_s": round(build.embed_seconds, 2),
        "build_titles_per_s": round(build.titles_per_s, 1),
        "peak_rss_mb_after_model_load": round(rss_after_load, 1),
        "peak_rss_mb_after_build": round(rss_after_build, 1),
        "update_rows_changed": len(changed),
        "update_rows_deleted": len(deletes),
        "update_embedded": update.embedded,
        "update_s": round(update.seconds, 2),
        "update_embed_s": round(update.embed_seconds, 2),
        "speedup_build_over_update": round(build.seconds / update.seconds, 1),
        "verify_s": round(verify.seconds, 3),
        "verify_mb_hashed": round(verify.bytes_hashed / 1e6, 1),
        "open_sizes_only_s": round(open_sizes_s, 3),
        "open_with_sha256_s": round(open_sha_s, 3),
        "version_files_bytes": sizes,
    }
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, load avg {info['load_avg_start']} -> {result['machine']['load_avg_end']}")
    print(f"build:  {build.rows:,} rows in {build.seconds:.1f}s ({build.titles_per_s:,.0f} titles/s embedding), "
          f"peak RSS {rss_after_build:,.0f} MB (after model load {rss_after_load:,.0f} MB)")
    print(f"update: {len(changed):,} changed + {len(deletes):,} deleted in {update.seconds:.2f}s "
          f"({update.embedded:,} embedded in {update.embed_seconds:.2f}s)")
    print(f"ratio:  update is {build.seconds / update.seconds:.1f}x faster than a rebuild")
    print(f"verify: {verify.bytes_hashed / 1e6:.1f} MB hashed in {verify.seconds:.3f}s; open sizes-only "
          f"{open_sizes_s:.3f}s, open with sha256 {open_sha_s:.3f}s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
