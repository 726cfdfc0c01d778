"""Recall@10 of the vectors a (GPU, fp16) build stored against an fp32 reference, on a sample of its rows.

    python benchmarks/bench_gpu_recall.py --index data/index --model .minilm --sample 20000 --out recall.json

For `--sample` rows of the current version (spread over the faiss-id range), the title vectors are
read back from the FAISS index (what the build stored, e.g. fp16 bulk on CUDA) and embedded again
by the reference path, `SentenceTransformer.encode` in fp32 (`embedding.bulk: false`, the model
cast to float32; on the GPU when there is one, `--reference-device cpu` for the CPU). `--queries`
other titles, embedded by the reference, search both sets exactly (inner product); recall@10 is
the overlap of the two top-10 lists (`recall_at_10_stored_vs_fp32`, the figure the target names), and
also counted with ties (`recall_at_10_ties`): a row the stored vectors rank in the top 10 counts when
its fp32 score ties the fp32 10th score to 1e-5, as `index.autoindex.per_query_recall` counts, since
rows with the same title have the same vector and either may be 10th. `swap_gap_max` is the largest
fp32 score gap between a missed fp32 top-10 row and the 10th fp32 score: how near the rows that
swapped places were. Also printed: the cosine between stored and reference vectors
(min, mean), and the bulk embedder's own fp32 run on the CPU when `--cpu-check N` is given.
Writes one JSON object to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rows(meta: Path, count: int, skip: int = 0) -> list[tuple[int, str]]:
    conn = sqlite3.connect(f"file:{meta.as_posix()}?mode=ro", uri=True)
    total = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    step = max(1, total // max(1, count))
    rows = conn.execute(
        "SELECT faiss_id, title FROM rows WHERE rowid % ? = ? LIMIT ?", (step, skip % step, count)
    ).fetchall()
    conn.close()
    return [(int(i), t) for i, t in rows]


def _topk(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    d = torch.from_numpy(db).to(device)
    out = []
    for start in range(0, len(queries), 1024):
        q = torch.from_numpy(queries[start : start + 1024]).to(device)
        out.append(torch.topk(q @ d.T, k, dim=1).indices.cpu().numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="index.path of the build")
    p.add_argument("--model", required=True, help="embedding.model the build used")
    p.add_argument("--sample", type=int, default=20000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--reference-device", default="auto")
    p.add_argument("--cpu-check", type=int, default=0, help="also compare bulk fp32 on CPU for N titles")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    import torch

    from index.store import IndexStore, read_manifest
    from index.vector import FaissIndex
    from rag.config import load_config

    config = load_config(overrides=[f"index.path={args.index}"])
    store = IndexStore.from_config(config)
    version = store.current_version()
    vdir = store.version_dir(version)
    manifest = read_manifest(vdir)
    info = manifest["index"]
    index = FaissIndex.load(
        vdir / "vectors.faiss", info["type"], int(manifest["embedding"]["dimension"]), info.get("params", {})
    )
    sample = _rows(vdir / "meta.sqlite", args.sample)
    queries = [t for _, t in _rows(vdir / "meta.sqlite", args.queries, skip=1)]
    ids = np.array([i for i, _ in sample], dtype=np.int64)
    raw = index.raw
    if hasattr(raw, "set_direct_map_type") and info["type"] == "ivf":
        import faiss

        # ivf: reconstruct by id needs a direct map; the array kind takes only sequential ids, and
        # the project's ids are hashes of the uids (the first H200 run failed on it)
        raw.set_direct_map_type(faiss.DirectMap.Hashtable)
    stored = np.stack([raw.reconstruct(int(i)) for i in ids]).astype(np.float32)

    device = args.reference_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from index.embedder import load_embedder

    ref = load_embedder(
        load_config(
            overrides=[
                f"embedding.model={args.model}",
                f"embedding.device={device}",
                "embedding.backend=torch",  # the fp32 sentence-transformers reference on any device
                "embedding.bulk=false",
                "embedding.batch_size=512",
            ]
        ).embedding
    )
    ref.model.float()  # the weights may travel in fp16: the reference is fp32
    t0 = time.perf_counter()
    reference = ref.embed([t for _, t in sample])
    ref_s = time.perf_counter() - t0
    qvec = ref.embed(queries)
    cos = (stored * reference).sum(1)
    k = 10
    top_stored = _topk(stored, qvec, k)
    top_ref = _topk(reference, qvec, k)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_stored, top_ref, strict=True)]))
    from index.autoindex import recall_at_k

    ref_scores = np.einsum("qkd,qd->qk", reference[top_ref], qvec)  # fp32 scores of the fp32 top-10
    found_scores = np.einsum("qkd,qd->qk", reference[top_stored], qvec)  # fp32 scores of the stored top-10
    order = np.argsort(-ref_scores, axis=1)
    truth = (np.take_along_axis(ref_scores, order, 1), np.take_along_axis(top_ref, order, 1))
    recall_ties = recall_at_k(found_scores, top_stored, truth)
    gaps = [
        float(truth[0][q, -1] - found_scores[q].min())
        for q in range(len(top_ref))
        if set(top_ref[q].tolist()) != set(top_stored[q].tolist())
    ]
    result = {
        "version": version,
        "index_type": info["type"],
        "sample": len(sample),
        "queries": len(queries),
        "recall_at_10_stored_vs_fp32": recall,
        "recall_at_10_ties": recall_ties,
        "queries_with_a_swap": len(gaps),
        "swap_gap_max": max(gaps, default=0.0),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "reference": f"SentenceTransformer.encode fp32 on {device}",
        "reference_titles_per_s": len(sample) / ref_s,
        "build_timings": manifest.get("timings", {}),
        "rows": manifest["rows"],
    }
    if args.cpu_check:
        bulk = load_embedder(
            load_config(
                overrides=[
                    f"embedding.model={args.model}",
                    "embedding.device=cpu",
                    "embedding.backend=torch",
                    "embedding.bulk=true",
                ]
            ).embedding
        )
        n = min(args.cpu_check, len(sample))
        cpu_ref = reference[:n]
        got = bulk.embed([t for _, t in sample[:n]])
        result["cpu_bulk_fp32_cosine_min"] = float((got * cpu_ref).sum(1).min())
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ok = recall >= 0.999
    print(
        f"recall@10 stored vs fp32: {recall:.4f} ({'ok' if ok else 'BELOW 0.999'}); counting ties "
        f"{recall_ties:.4f}; {len(gaps)} queries swapped rows, fp32 score gap at most {max(gaps, default=0.0):.2e}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
