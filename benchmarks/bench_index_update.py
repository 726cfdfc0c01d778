"""Full build vs incremental update of the index, with the real MiniLM embedder.

    .venv/bin/python benchmarks/bench_index_update.py                      # 100k rows, update 1%
    .venv/bin/python benchmarks/bench_index_update.py --rows 5000 --embedder hashing:64   # mechanics only
    .venv/bin/python benchmarks/bench_index_update.py --reuse-index /tmp/bench100k/index  # update only, vs its build
    .venv/bin/python benchmarks/bench_index_update.py --large /tmp/idx13m --backend onnx  # 10k rows into 1.3M

`--reuse-index DIR`: copies an index built earlier by this benchmark (hard links, the files are
immutable), rolls the copy back to its first (build) version and times only the update, against
the build time recorded in that version's manifest.

`--large WORKDIR` (the "make it fast" target): WORKDIR holds `index/` (a 1.3M-row flat base built
with `embedding.model=hashing:384`, see docs/index.md for the command) and `new.jsonl` (10,000
rows not in it). The update embeds the new titles with the real MiniLM (torch or onnx backend);
the wrapper reports the base's embedder name because FAISS only sees 384-d unit vectors, so the
mechanics and timings are those of a real update. A thread queries a LiveIndex throughout and
counts errors and latency; the report separates embedding time from store time.

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
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model, peak_rss_mib


def machine() -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_start": os.getloadavg(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--update-fraction", type=float, default=0.01)
    parser.add_argument("--delete-fraction", type=float, default=0.001)
    parser.add_argument(
        "--embedder",
        default="bundled:all-MiniLM-L6-v2",
        help="embedding.model (hashing:64 for mechanics only)",
    )
    parser.add_argument("--type", default="flat", choices=["flat", "hnsw", "ivf"])
    parser.add_argument(
        "--workdir", default=None, help="keep the catalog and index here (default: a temp dir)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--reuse-index", default=None, help="time only the update on a copy of this index (see above)"
    )
    parser.add_argument(
        "--large", default=None, metavar="WORKDIR", help="10k new rows into the 1.3M-row base in WORKDIR"
    )
    parser.add_argument("--backend", default="torch", help="embedding.backend for --large / --reuse-index")
    parser.add_argument(
        "--runs", type=int, default=1, help="--large: timed updates, each with 10k fresh uids"
    )
    args = parser.parse_args()
    if args.large:
        return large(args)
    if args.reuse_index:
        return reuse(args)

    from index.build import build_index, update_index
    from index.embedder import load_embedder
    from index.store import IndexStore
    from rag.config import load_config
    from rag.synthetic import write_synthetic_catalog

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_index_update_"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    config = load_config(
        None,
        [
            f"index.path={work / 'index'}",
            f"embedding.model={args.embedder}",
            f"index.type={args.type}",
            "index.descriptions=false",
            "index.keep_versions=0",
            f"embedding.batch_size={args.batch_size}",
        ],
    )
    catalog = work / "catalog.jsonl"
    if not catalog.exists():
        write_synthetic_catalog(catalog, rows=args.rows, seed=0)

    t0 = time.perf_counter()
    embedder = load_embedder(config.embedding)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mib()

    print(f"building {args.rows:,} rows with {embedder.name} ({args.type}) in {work} ...", flush=True)
    build = build_index(config, [catalog], progress=False, embedder=embedder)
    rss_after_build = peak_rss_mib()
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
    print(
        f"\nmachine: {info['cpu']}, {info['cores']} cores, load avg {info['load_avg_start']} -> {result['machine']['load_avg_end']}"
    )
    print(
        f"build:  {build.rows:,} rows in {build.seconds:.1f}s ({build.titles_per_s:,.0f} titles/s embedding), "
        f"peak RSS {rss_after_build:,.0f} MB (after model load {rss_after_load:,.0f} MB)"
    )
    print(
        f"update: {len(changed):,} changed + {len(deletes):,} deleted in {update.seconds:.2f}s "
        f"({update.embedded:,} embedded in {update.embed_seconds:.2f}s)"
    )
    print(f"ratio:  update is {build.seconds / update.seconds:.1f}x faster than a rebuild")
    print(
        f"verify: {verify.bytes_hashed / 1e6:.1f} MB hashed in {verify.seconds:.3f}s; open sizes-only "
        f"{open_sizes_s:.3f}s, open with sha256 {open_sha_s:.3f}s"
    )
    print(json.dumps(result))
    return 0


class _NamedAs:
    """An embedder that reports another embedder's name (see --large in the module docstring)."""

    def __init__(self, inner, name: str) -> None:
        self.inner, self.name, self.dimension = inner, name, inner.dimension

    def embed(self, texts, batch_size: int = 256):
        return self.inner.embed(texts, batch_size=batch_size)

    def embed_query(self, text):
        return self.inner.embed_query(text)


def _copy_tree_linked(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("lock"))


def reuse(args: argparse.Namespace) -> int:
    """(a) with an index built earlier: roll a linked copy back to its build, time the update."""
    from index.build import update_index
    from index.embedder import load_embedder
    from index.store import IndexStore
    from rag.config import load_config

    src = Path(args.reuse_index)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_index_reuse_"))
    dst = work / "index"
    if dst.exists():
        import shutil

        shutil.rmtree(dst)
    _copy_tree_linked(src, dst)
    info = machine()
    config = load_config(
        None,
        [
            f"index.path={dst}",
            f"embedding.model={args.embedder}",
            "index.descriptions=false",
            "index.keep_versions=0",
            f"embedding.backend={args.backend}",
            f"embedding.batch_size={args.batch_size}",
        ],
    )
    store = IndexStore.from_config(config)
    build_version = store.complete_versions()[0]
    store.switch_current(build_version)  # the copy only: the source index is untouched
    build_manifest = store.manifest(build_version)
    build_s = float(build_manifest["timings"]["total_s"])
    embedder = load_embedder(config.embedding)
    update_file = src.parent / "update.jsonl"
    catalog = src.parent / "catalog.jsonl"
    deletes = []
    with open(catalog, encoding="utf-8") as fh:  # the same 0.1% deletions as the full benchmark
        for i, line in enumerate(fh):
            if i % 1000 == 1:
                deletes.append(json.loads(line)["uid"])
    update = update_index(
        config,
        [update_file],
        deletes,
        progress=False,
        embedder=_NamedAs(embedder, build_manifest["embedding"]["model"]),
    )
    print(update.summary())
    print(
        f"\nmachine: {info['cpu']}, {info['cores']} cores, load avg {info['load_avg_start']} -> {os.getloadavg()}"
    )
    print(
        f"build (recorded in {build_version}'s manifest): {build_manifest['rows']:,} rows in {build_s:.1f}s"
    )
    print(
        f"update ({args.backend}): {update.embedded:,} embedded + {update.deleted:,} deleted in {update.seconds:.2f}s "
        f"(embedding {update.embed_seconds:.2f}s, store {update.store_seconds:.2f}s: {update.timings})"
    )
    print(f"ratio: update is {build_s / update.seconds:.1f}x faster than the rebuild")
    print(
        json.dumps(
            {
                "machine": {**info, "load_avg_end": os.getloadavg()},
                "build_s": build_s,
                "update_s": update.seconds,
                "update_embed_s": update.embed_seconds,
                "update_store_s": update.store_seconds,
                "timings": update.timings,
                "ratio": build_s / update.seconds,
                "backend": args.backend,
            }
        )
    )
    return 0


def large(args: argparse.Namespace) -> int:
    """(b) 10,000 new rows into the 1.3M-row base while a thread queries a LiveIndex."""
    import threading

    import numpy as np

    from index.build import update_index
    from index.embedder import load_embedder
    from index.store import IndexStore, LiveIndex
    from rag.config import load_config

    work = Path(args.large)
    info = machine()
    config = load_config(
        None,
        [
            f"index.path={work / 'index'}",
            "embedding.model=bundled:all-MiniLM-L6-v2",
            f"embedding.backend={args.backend}",
            "index.keep_versions=3",
            f"embedding.batch_size={args.batch_size}",
        ],
    )
    store = IndexStore.from_config(config)
    manifest = store.manifest()
    t0 = time.perf_counter()
    embedder = load_embedder(config.embedding)
    print(f"model {embedder.name} ({args.backend}) loaded in {time.perf_counter() - t0:.1f}s", flush=True)
    named = _NamedAs(embedder, manifest["embedding"]["model"])
    new_rows = [
        json.loads(line)
        for line in (work / "new.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    queries = embedder.embed([r["title"] for r in new_rows[:64]])

    t0 = time.perf_counter()
    live = LiveIndex(store, check_interval_s=0.2)
    first = live.snapshot()  # the first open hashes the whole base once (as a server start does)
    print(
        f"LiveIndex first open of {first.version} ({first.rows:,} rows): {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    if not any("mtime_ns" in e for e in first.manifest["files"].values()):
        # a base written before segments existed: one small update records the files' mtimes
        t0 = time.perf_counter()
        rep = update_index(config, [], ["no-such-uid"], progress=False, embedder=named)
        print(
            f"first update on a pre-segments version (hashes the base once): {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        del rep
    results = []
    for run in range(args.runs):
        tag = f"r{int(time.time())}-{run}-"
        data = work / f"new_{run}.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            fh.writelines(
                json.dumps({**r, "uid": tag + str(r.get("uid"))}, ensure_ascii=False) + "\n" for r in new_rows
            )
        stop = threading.Event()
        stats = {"queries": 0, "errors": 0, "versions": set(), "lat": []}

        def reader(stop: threading.Event = stop, stats: dict = stats) -> None:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    snap = live.snapshot()
                    _scores, ids = snap.search(queries[i % len(queries)], 10)
                    rows = snap.get_rows(ids[0])
                    if any(r is None for r in rows) or len(rows) != 10:  # every hit has its row
                        stats["errors"] += 1
                    stats["versions"].add(snap.version)
                except Exception:  # noqa: BLE001 - counted, the benchmark reports it
                    stats["errors"] += 1
                stats["lat"].append(time.perf_counter() - t)
                stats["queries"] += 1
                i += 1

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(2.0)  # queries before the update
        before = store.current_version()
        load0 = os.getloadavg()
        update = update_index(config, [data], progress=False, embedder=named)
        t_commit = time.perf_counter()
        while live.snapshot().version != update.version and time.perf_counter() - t_commit < 120:
            time.sleep(0.05)
        switch_s = time.perf_counter() - t_commit
        time.sleep(2.0)  # and after
        stop.set()
        thread.join()
        snap = live.snapshot()
        found = snap.get_by_uid(tag + str(new_rows[5].get("uid")))
        lat = np.array(stats["lat"]) * 1000
        result = {
            "run": run,
            "parent": before,
            "version": update.version,
            "rows": update.rows,
            "inserted": update.inserted,
            "update_s": round(update.seconds, 2),
            "embed_s": round(update.embed_seconds, 2),
            "store_s": round(update.store_seconds, 2),
            "timings": update.timings,
            "delta_rows": update.delta_rows,
            "compacted": update.compacted,
            "live_switch_after_commit_s": round(switch_s, 2),
            "queries": stats["queries"],
            "query_errors": stats["errors"],
            "versions_seen": len(stats["versions"]),
            "query_ms_p50": round(float(np.percentile(lat, 50)), 1),
            "query_ms_p95": round(float(np.percentile(lat, 95)), 1),
            "query_ms_max": round(float(lat.max()), 1),
            "new_row_found": found is not None,
            "load_avg_before": load0,
            "load_avg_after": os.getloadavg(),
            "backend": args.backend,
        }
        results.append(result)
        print(update.summary(), flush=True)
        print(json.dumps(result), flush=True)
    print(
        f"\nmachine: {info['cpu']}, {info['cores']} cores, load avg {info['load_avg_start']} -> {os.getloadavg()}"
    )
    for r in results:
        print(
            f"10k new rows into {r['rows'] - r['inserted']:,}: {r['update_s']}s total = embedding {r['embed_s']}s "
            f"({args.backend}) + store {r['store_s']}s; queries {r['queries']} ({r['query_errors']} errors), "
            f"p50 {r['query_ms_p50']} ms, p95 {r['query_ms_p95']} ms, max {r['query_ms_max']} ms; "
            f"LiveIndex on the new version {r['live_switch_after_commit_s']}s after the commit"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
