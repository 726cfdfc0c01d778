"""Benchmark: the description index (index/lexical.py) and the whole fused retrieval at catalog scale.

    .venv/bin/python benchmarks/bench_lexical.py --rows 100000
    .venv/bin/python benchmarks/bench_lexical.py --rows 1300000 --dense ivf --out results/bench_lexical_1.3M.json
    .venv/bin/python benchmarks/bench_lexical.py --rows 20000 --queries 50 --dense none      # quick check
    .venv/bin/python benchmarks/bench_lexical.py --rows 1300000 --dense ivf --reuse         # keep the built index

What it does, exactly:
1. Writes `--rows` rows of the deterministic synthetic catalog (`rag.synthetic`, real title and
   description length distributions, ~40% empty descriptions), cleans them with the project's
   catalog reader and stores them in a meta.sqlite like `rag index build` does (cached under
   `--cache-dir`; the time is not part of the figures).
2. Builds the description index in a child process: wall time, peak RSS of that process, size of
   the files on disk, postings and terms.
3. Incremental update: 1% of the rows get a new description and 0.1% are deleted; times
   `update_artifacts` (hard-linked base + rebuilt delta + tombstones).
4. Description search alone: `--queries` questions that describe a product from a random sentence
   of its description (English, and a third in Portuguese frame words), timed one at a time with
   snippets; p50/p95, and how often the pruned scoring's best score equals exhaustive BM25's.
   (The synthetic descriptions reuse a pool of sentences, so "the row the sentence came from" is
   not a fair target here; described-question recall is measured on real rows, docs/descriptions.md.)
5. With `--dense flat|hnsw|ivf`: a complete index version (FAISS over unit random vectors, one per
   row: the latency of a search does not depend on the values for flat and ivf; hnsw is shown as
   measured) and `rag.retrieval.Retriever` with the real MiniLM query embedder. For each question
   the MiniLM query embedding is timed alone, then the whole `Retriever.search` (title path +
   description path + fusion; the embedding then comes from the embedder's query cache) with
   descriptions off and on: per-stage p50/p95 and the total, in wall time and in CPU time of the
   process (on a shared machine other jobs inflate wall time; CPU time is the work itself).
6. Then `rag ask`'s retrieval as served, query embedding included: the same questions through
   `Retriever.search` with an embedder whose query cache is off (every question embedded for
   real, onnx int8 by default), once with `retrieval.parallel_paths` (the description search in a
   worker thread while the question is embedded and the title index searched) and once without,
   interleaved question by question: `ask.*` and `ask_serial.*`, wall time. `--nlist 4096 --nprobe 9`
   gives the IVF index what `index.type: auto` chose at 1.3M rows (docs/performance.md, issue 16):

    .venv/bin/python benchmarks/bench_lexical.py --rows 1300000 --dense ivf --nlist 4096 --nprobe 9 \
        --train-points 65536 --queries 100 --out results/bench_lexical_1m_defaults.json

   (k-means on 65,536 of the random vectors instead of 64 per list: minutes less to build; the search
   time of an IVF index depends on nlist, nprobe and the list sizes, not on the training sample.)

Prints the machine and the load average; `--out` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model, peak_rss_mib, write_result


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    cpu = cpu_model(platform.processor() or "unknown CPU")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.1f} GiB RAM, python {platform.python_version()}, numpy {np.__version__}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def prepare(rows: int, workdir: Path, seed: int) -> Path:
    """meta.sqlite of `rows` cleaned synthetic rows (cached)."""
    from index.metadata import META_FILE, content_hash, open_for_writing
    from index.vector import uid_to_id
    from rag.catalog import CatalogReader
    from rag.config import Config
    from rag.synthetic import write_synthetic_catalog

    meta = workdir / META_FILE
    if meta.exists():
        return meta
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = write_synthetic_catalog(workdir / "catalog.jsonl", rows, seed=seed)
    tmp = workdir / (META_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = open_for_writing(tmp)
    conn.execute("BEGIN")
    reader = CatalogReader(Config().catalog, workdir / "rejects.jsonl")
    batch = []
    for row in reader.iter_rows([data]):
        batch.append(
            (
                uid_to_id(row.uid),
                row.uid,
                row.title,
                row.content,
                content_hash(row.title, row.content),
                row.source,
                row.line,
            )
        )
        if len(batch) >= 10000:
            conn.executemany("INSERT OR IGNORE INTO rows VALUES (?,?,?,?,?,?,?)", batch)
            batch = []
    conn.executemany("INSERT OR IGNORE INTO rows VALUES (?,?,?,?,?,?,?)", batch)
    conn.execute("COMMIT")
    conn.close()
    tmp.rename(meta)
    data.unlink()
    print(
        f"prepared {rows:,} cleaned rows in {time.perf_counter() - t0:.0f}s ({reader.summary.summary()})",
        file=sys.stderr,
    )
    return meta


def child_build(meta: Path, out_dir: Path) -> None:
    """Runs in a child process so that its peak RSS is the build's alone."""
    from index.lexical import build_artifacts

    t0 = time.perf_counter()
    names = build_artifacts(meta, out_dir)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mib(), "files": names}))


def make_questions(meta: Path, n: int, seed: int) -> list[tuple[str, int]]:
    """(question, faiss_id): a random sentence of a random described row, cut to 6-10 words."""
    rng = random.Random(seed)
    conn = sqlite3.connect(meta)
    total = conn.execute("SELECT max(rowid) FROM rows").fetchone()[0]
    out: list[tuple[str, int]] = []
    frames_en = ["a book about {}", "{}", "the one where {}", "something with {}"]
    frames_pt = ["um livro sobre {}", "procuro algo com {}"]
    while len(out) < n:
        fid, content = conn.execute(
            "SELECT faiss_id, content FROM rows WHERE rowid >= ? LIMIT 1", (rng.randrange(total),)
        ).fetchone() or (None, "")
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", content or "") if len(s.split()) >= 6]
        if not sentences:
            continue
        words = rng.choice(sentences).rstrip(".!?").split()
        start = rng.randrange(max(1, len(words) - 6))
        phrase = " ".join(words[start : start + rng.randint(6, 10)])
        frame = rng.choice(frames_pt if len(out) % 3 == 2 else frames_en)
        out.append((frame.format(phrase), int(fid)))
    conn.close()
    return out


def bench_update(meta: Path, base_dir: Path, workdir: Path, seed: int) -> dict[str, Any]:
    from index.lexical import update_artifacts
    from index.metadata import META_FILE, content_hash

    v2 = workdir / "v2"
    shutil.rmtree(v2, ignore_errors=True)
    v2.mkdir()
    shutil.copyfile(meta, v2 / META_FILE)
    conn = sqlite3.connect(v2 / META_FILE)
    n = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    rng = random.Random(seed)
    uids = [r[0] for r in conn.execute("SELECT uid FROM rows")]
    picked = rng.sample(uids, max(1, n // 100) + max(1, n // 1000))
    changed, deleted = picked[: max(1, n // 100)], picked[max(1, n // 100) :]
    for uid in changed:
        title, content = conn.execute("SELECT title, content FROM rows WHERE uid=?", (uid,)).fetchone()
        content = (content + " Now with a revised foreword.").strip()
        conn.execute(
            "UPDATE rows SET content=?, content_hash=? WHERE uid=?",
            (content, content_hash(title, content), uid),
        )
    conn.executemany("DELETE FROM rows WHERE uid=?", [(u,) for u in deleted])
    conn.commit()
    conn.close()
    t0 = time.perf_counter()
    names = update_artifacts(v2 / META_FILE, v2, base_dir, changed, deleted)
    seconds = time.perf_counter() - t0
    written = sum((v2 / f).stat().st_size for f in names if os.stat(v2 / f).st_nlink == 1)
    return {"changed": len(changed), "deleted": len(deleted), "seconds": seconds, "new_bytes": written}


def build_version(
    meta: Path, lex_dir: Path, root: Path, index_type: str, embedder: Any, ivf: list[str] | None = None
) -> Any:
    """A complete index version (vectors.faiss + meta + lexical, manifest) under `root`; returns its config."""
    from index.metadata import META_FILE
    from index.store import VECTORS_FILE, IndexStore
    from index.vector import FaissIndex
    from rag.config import load_config

    config = load_config(None, [f"index.path={root}", f"index.type={index_type}", *(ivf or [])])
    store = IndexStore.from_config(config)
    if store.has_current():
        return config
    conn = sqlite3.connect(meta)
    ids = np.fromiter(
        (r[0] for r in conn.execute("SELECT faiss_id FROM rows ORDER BY faiss_id")), dtype=np.int64
    )
    conn.close()
    with store.lock():
        vdir = store.new_version_dir()
        t0 = time.perf_counter()
        index = FaissIndex.from_config(embedder.dimension, config.index)
        rng = np.random.default_rng(0)
        for start in range(0, len(ids), 100_000):
            vec = rng.standard_normal((min(100_000, len(ids) - start), embedder.dimension), dtype=np.float32)
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            index.add(ids[start : start + 100_000], vec)
        index.save(vdir / VECTORS_FILE)
        print(
            f"{index_type} index over {len(ids):,} random vectors in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
        )
        os.link(meta, vdir / META_FILE)  # hard links: the benchmark's files are never modified
        names = json.loads((lex_dir / "build.json").read_text())["files"]
        for name in names:
            os.link(lex_dir / name, vdir / name)
        manifest = {
            "rows": len(ids),
            "operation": "build",
            "parent": None,
            "embedding": {"model": embedder.name, "dimension": int(embedder.dimension)},
            "index": {"type": index.type, "params": index.params},
            "artifacts": names,
            "file_names": [VECTORS_FILE, META_FILE, *names],
        }
        store.commit_version(vdir, manifest)
    return config


def ask_stages(config: Any, questions: list[tuple[str, int]]) -> dict[str, list[float]]:
    """`rag ask`'s retrieval with the query embedding: no query cache, parallel paths on and off.

    The two retrievers alternate which goes first, question by question, so both see the same load."""
    from dataclasses import replace

    from index.embedder import load_embedder
    from rag.retrieval import Retriever

    embedder = load_embedder(replace(config.embedding, cache_size=0))  # every question embedded for real
    runs = {}
    # code from before retrieval.parallel_paths (to measure it with this script): its one path as "ask"
    has_option = hasattr(config.retrieval, "parallel_paths")
    for label, parallel in [("ask", True), ("ask_serial", False)] if has_option else [("ask", None)]:
        options: dict[str, Any] = {"use_descriptions": True}
        if parallel is not None:
            options["parallel_paths"] = parallel
        cfg = replace(config, retrieval=replace(config.retrieval, **options))
        runs[label] = Retriever.from_config(cfg, embedder=embedder)
        for q, _ in questions[:10]:
            runs[label].search(q + " warm-up", k=5)
    stages: dict[str, list[float]] = {}
    for n, (q, _) in enumerate(questions):
        for label in list(runs) if n % 2 == 0 else list(runs)[::-1]:
            t0 = time.perf_counter()
            _, timings = runs[label].search_with_timings(q, k=5)
            stages.setdefault(f"{label}.total", []).append((time.perf_counter() - t0) * 1000)
            for stage, sec in timings.items():
                stages.setdefault(f"{label}.{stage}", []).append(sec * 1000)
    return stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dense",
        choices=["none", "flat", "hnsw", "ivf"],
        default="none",
        help="also time the whole Retriever.search with this FAISS index type (random vectors)",
    )
    p.add_argument(
        "--nlist", type=int, default=None, help="ivf: lists (index.ivf_nlist; default its default)"
    )
    p.add_argument("--nprobe", type=int, default=None, help="ivf: lists probed (index.ivf_nprobe)")
    p.add_argument(
        "--train-points",
        type=int,
        default=None,
        help="ivf: k-means sample (index.ivf_train_points); random vectors need no large sample",
    )
    p.add_argument("--cache-dir", default="/tmp/bench_lexical", help="where the rows and indexes are kept")
    p.add_argument("--out", default=None, help="write the figures to this JSON file")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the description index of an earlier run (figures from then)",
    )
    p.add_argument("--child-build", nargs=2, metavar=("META", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_build:
        child_build(Path(args.child_build[0]), Path(args.child_build[1]))
        return 0

    work = Path(args.cache_dir) / f"rows-{args.rows}"
    meta = prepare(args.rows, work, args.seed)
    result: dict[str, Any] = {"rows": args.rows, "machine": machine(), "load_average": [os.getloadavg()]}
    print(f"machine: {result['machine']}, load average {os.getloadavg()[0]:.2f}")

    lex_dir = work / "lexical"
    if args.reuse and (lex_dir / "build.json").exists():
        built = json.loads((lex_dir / "build.json").read_text())
    else:
        shutil.rmtree(lex_dir, ignore_errors=True)
        lex_dir.mkdir()
        os.link(
            meta, lex_dir / "meta.sqlite"
        )  # the parent version's rows: update_artifacts looks deleted uids up there
        child = subprocess.run(
            [sys.executable, __file__, "--child-build", str(meta), str(lex_dir)],
            capture_output=True,
            text=True,
            check=True,
        )
        built = json.loads(child.stdout.strip().splitlines()[-1])
        (lex_dir / "build.json").write_text(json.dumps(built))
    size = sum((lex_dir / f).stat().st_size for f in built["files"])
    lex_meta = json.loads((lex_dir / "lexical.json").read_text())
    base = lex_meta["segments"]["base"]
    result["build"] = {
        "seconds": built["seconds"],
        "peak_rss_mb": built["peak_rss_mb"],
        "disk_mb": size / 2**20,
        "docs": base["docs"],
        "terms": base["terms"],
        "postings": base["postings"],
    }
    print(
        f"build: {built['seconds']:.1f}s, peak RSS {built['peak_rss_mb']:.0f} MB, on disk {size / 2**20:.1f} MB "
        f"({base['docs']:,} docs, {base['terms']:,} terms, {base['postings']:,} postings)"
    )

    upd = bench_update(meta, lex_dir, work, args.seed)
    result["update"] = upd
    result["full_rebuild_seconds"] = built["seconds"]
    print(
        f"update: {upd['changed']:,} changed + {upd['deleted']:,} deleted rows in {upd['seconds']:.2f}s, "
        f"{upd['new_bytes'] / 2**20:.2f} MB of new files (the base is hard-linked)"
    )

    from index.lexical import LexicalIndex
    from index.metadata import MetadataReader

    questions = make_questions(meta, args.queries + 10, args.seed)
    warmup, questions = questions[:10], questions[10:]
    rss0 = rss_mb()
    index = LexicalIndex(lex_dir)
    reader = MetadataReader(meta)
    rss_open = rss_mb()
    for q, _ in warmup:
        index.search(q, 50, get_rows=reader.get_rows)
    from index.lexical import query_terms

    times, cpu_times, score_times, agree = [], [], [], 0
    for q, _fid in questions:
        c0, t0 = time.process_time(), time.perf_counter()
        index.search(q, 50, get_rows=reader.get_rows)
        times.append((time.perf_counter() - t0) * 1000)
        cpu_times.append((time.process_time() - c0) * 1000)
        terms = query_terms(q)
        t0 = time.perf_counter()
        pruned = index.score(terms, 10)
        score_times.append((time.perf_counter() - t0) * 1000)
        exact = index.score(terms, 10, exhaustive=True)
        # pruning fidelity: the best score found equals the exhaustive BM25's best score
        agree += bool(pruned and exact and abs(pruned[0][1] - exact[0][1]) <= 1e-4 * exact[0][1]) or (
            not pruned and not exact
        )
    result["search"] = {
        "queries": len(questions),
        "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
        "cpu_p50_ms": pct(cpu_times, 50),
        "cpu_p95_ms": pct(cpu_times, 95),
        "score_p50_ms": pct(score_times, 50),
        "score_p95_ms": pct(score_times, 95),
        "top1_equals_exhaustive": agree / len(questions),
        "rss_open_mb": rss_open - rss0,
        "rss_after_mb": rss_mb() - rss0,
    }
    s = result["search"]
    print(
        f"description search (k=50, snippets for the top 10): p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms "
        f"(CPU time p50 {s['cpu_p50_ms']:.2f} ms, p95 {s['cpu_p95_ms']:.2f} ms); "
        f"BM25 scoring alone p50 {s['score_p50_ms']:.2f} ms, p95 {s['score_p95_ms']:.2f} ms; "
        f"top-1 equal to exhaustive BM25 in {s['top1_equals_exhaustive']:.0%} of {len(questions)} questions"
    )
    print(
        f"memory: RSS +{s['rss_open_mb']:.0f} MB on open, +{s['rss_after_mb']:.0f} MB after the queries "
        f"(memory-mapped pages)"
    )

    if args.dense != "none":
        from index.embedder import load_embedder
        from rag.config import Config
        from rag.retrieval import Retriever

        embedder = load_embedder(Config().embedding)  # with its query cache: see below
        ivf = [f"index.ivf_nlist={args.nlist}"] if args.nlist else []
        ivf += [f"index.ivf_nprobe={args.nprobe}"] if args.nprobe else []
        ivf += [f"index.ivf_train_points={args.train_points}"] if args.train_points else []
        name = f"index-{args.dense}" + (f"-nlist{args.nlist}" if args.nlist else "")
        name += f"-train{args.train_points}" if args.train_points else ""
        config = build_version(meta, lex_dir, work / name, args.dense, embedder, ivf)
        result["dense_params"] = {
            "ivf_nlist": args.nlist,
            "ivf_nprobe": args.nprobe,
            "ivf_train_points": args.train_points,
        }
        stages: dict[str, list[float]] = {}
        for use in (False, True):
            config.retrieval.use_descriptions = use
            retriever = Retriever.from_config(config, embedder=embedder)
            for q, _ in warmup:
                retriever.search(q, k=5)
            label = "fused" if use else "title"
            for q, _ in questions:
                # 1. the query embedding alone (MiniLM), timed on its own ...
                c0, t0 = time.process_time(), time.perf_counter()
                retriever._embed_query(retriever.parse(q).title_query or q)
                stages.setdefault("embed (MiniLM)", []).append((time.perf_counter() - t0) * 1000)
                stages.setdefault("embed (MiniLM) cpu", []).append((time.process_time() - c0) * 1000)
                # 2. ... then the whole search, which finds that embedding in the embedder's query cache:
                # title path + description path + fusion. CPU time of the process as well as wall time:
                # on a shared machine other jobs inflate wall time, CPU time is the work this query costs.
                c0, t0 = time.process_time(), time.perf_counter()
                retriever.search(q, k=5)
                total = (time.perf_counter() - t0) * 1000
                stages.setdefault(f"{label}.total_cpu", []).append((time.process_time() - c0) * 1000)
                for stage, sec in retriever.last_timings.items():
                    if stage != "embed":
                        stages.setdefault(f"{label}.{stage}", []).append(sec * 1000)
                stages.setdefault(f"{label}.total", []).append(total)
        stages.update(ask_stages(config, questions))
        result["load_average"].append(os.getloadavg())
        result["retrieval"] = {
            "index_type": args.dense,
            **{k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for k, v in stages.items()},
        }
        print(f"whole retrieval ({args.dense} title index; query embedding timed separately; ms p50 / p95):")
        for k, v in stages.items():
            print(f"  {k:28s} {pct(v, 50):8.2f} {pct(v, 95):8.2f}")
        result["rss_total_mb"] = rss_mb()
    if args.out:
        write_result(args.out, result, announce=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
