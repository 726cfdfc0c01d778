"""Benchmark: title embedding throughput and quality per backend (torch fp32, onnx fp32, onnx int8).

    .venv/bin/python benchmarks/bench_embed.py --out results/bench_embed.json
    .venv/bin/python benchmarks/bench_embed.py --titles 2000 --backends torch,onnx-int8      # quick
    .venv/bin/python benchmarks/bench_embed.py --real-data ../shared/data/amazontitles/trn_sample.jsonl

Each backend runs in its own process (so peak RSS is its own) on:
* `--titles` (default 5,000) real-length synthetic titles (`rag.synthetic.generate_records`), and
* with `--real-data`, the titles of that catalog file (e.g. the 300 real rows);
and reports titles/s (wall clock, after one warm-up batch), titles per CPU-second (process CPU time: on a
busy shared machine the wall figure mostly measures the other jobs), single-query latency (p50/p95,
one text per call, uncached), peak RSS, and quality against torch fp32: cosine of each title's vector
(min/mean) and top-10 neighbour agreement (for each of 300 titles, the share of torch's 10 nearest
titles that the backend also ranks in its top 10). Retrieval recall on the question set is measured
with `rag eval retrieval` (commands in docs/performance.md). Prints the machine; `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import peak_rss_mib, write_result

BACKENDS = {  # name -> config overrides
    "torch": ["embedding.backend=torch"],
    "onnx-fp32": ["embedding.backend=onnx", "embedding.onnx_quantize=none"],
    "onnx-int8": ["embedding.backend=onnx", "embedding.onnx_quantize=int8"],
    "openvino": ["embedding.backend=openvino"],
}


def titles_of(args: argparse.Namespace) -> dict[str, list[str]]:
    from rag.cleaning import clean_title
    from rag.synthetic import generate_records

    sets = {"synthetic": [clean_title(r["title"]) for r in generate_records(args.titles, seed=args.seed)]}
    if args.real_data:
        from rag.catalog import iter_raw_records

        sets["real"] = [
            clean_title(str(rec.get("title") or ""))
            for _line, rec in iter_raw_records(args.real_data)
            if isinstance(rec, dict)
        ]
    return sets


def one(args: argparse.Namespace) -> dict[str, Any]:
    """Run one backend in this process; vectors go to args.vectors_dir."""
    from rag.config import load_config

    overrides = BACKENDS[args.one] + ["embedding.cache_size=0", f"embedding.batch_size={args.batch_size}"]
    if args.threads:
        overrides.append(f"embedding.num_threads={args.threads}")
    from index.embedder import load_embedder

    t0 = time.perf_counter()
    embedder = load_embedder(load_config(None, overrides).embedding)
    out: dict[str, Any] = {"backend": args.one, "load_s": round(time.perf_counter() - t0, 2)}
    for name, titles in titles_of(args).items():
        embedder.embed(titles[: args.batch_size])  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        vectors = embedder.embed(titles)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        np.save(Path(args.vectors_dir) / f"{args.one}_{name}.npy", vectors, allow_pickle=False)
        out[name] = {
            "titles": len(titles),
            "seconds": round(wall, 2),
            "titles_per_s": round(len(titles) / wall, 1),
            "titles_per_cpu_s": round(len(titles) / cpu, 1),
            "mean_chars": round(sum(map(len, titles)) / len(titles), 1),
        }
    from rag.evaluation.metrics import percentile

    queries = [f"what is {t} about?" for t in titles_of(args)["synthetic"][:100]]
    for q in queries[:5]:
        embedder.embed([q])
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        embedder.embed([q])
        ms.append((time.perf_counter() - t0) * 1e3)
    out["query_p50_ms"], out["query_p95_ms"] = round(percentile(ms, 50), 2), round(percentile(ms, 95), 2)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


def agreement(ref: np.ndarray, other: np.ndarray, probes: int = 300, k: int = 10) -> float:
    probes = min(probes, len(ref))
    a = np.argsort(-(ref[:probes] @ ref.T), axis=1)[:, 1 : k + 1]  # skip the title itself
    b = np.argsort(-(other[:probes] @ other.T), axis=1)[:, 1 : k + 1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--titles", type=int, default=5000)
    parser.add_argument("--real-data", default=None, help="a catalog file whose titles are also embedded")
    parser.add_argument("--backends", default="torch,onnx-fp32,onnx-int8", help=",".join(BACKENDS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vectors-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args)))
        return 0

    from rag.evaluation.runner import environment, environment_line

    env = environment()
    print(environment_line(env), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                backend,
                "--vectors-dir",
                tmp,
                "--titles",
                str(args.titles),
                "--batch-size",
                str(args.batch_size),
                "--seed",
                str(args.seed),
            ]
            cmd += ["--real-data", args.real_data] if args.real_data else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode != 0:
                print(
                    f"{backend}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
                )
                results.append({"backend": backend, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            for name in ("synthetic", "real"):
                ref_path, path = Path(tmp) / f"torch_{name}.npy", Path(tmp) / f"{backend}_{name}.npy"
                if name in row and ref_path.exists():
                    ref, vec = np.load(ref_path), np.load(path)
                    cos = (ref * vec).sum(axis=1)
                    row[name].update(
                        {
                            "cosine_to_torch_min": round(float(cos.min()), 4),
                            "cosine_to_torch_mean": round(float(cos.mean()), 5),
                            "top10_agreement_with_torch": round(agreement(ref, vec), 4),
                        }
                    )
            syn = row["synthetic"]
            # flat figures first, so benchmarks/report.py's generic table shows them
            row = {
                "backend": backend,
                "synthetic_titles_per_s": syn["titles_per_s"],
                "synthetic_titles_per_cpu_s": syn["titles_per_cpu_s"],
                "real_titles_per_s": row.get("real", {}).get("titles_per_s"),
                "query_p50_ms": row["query_p50_ms"],
                "query_p95_ms": row["query_p95_ms"],
                "peak_rss_mib": row["peak_rss_mib"],
                "cosine_to_torch_min": syn.get("cosine_to_torch_min", 1.0),
                "top10_agreement_with_torch": syn.get("top10_agreement_with_torch", 1.0),
                **{k: v for k, v in row.items() if k != "backend"},
            }
            results.append(row)
            print(
                f"{backend}: {syn['titles_per_s']:.0f} titles/s ({syn['titles_per_cpu_s']:.0f} per CPU-s), "
                f"query p50 {row['query_p50_ms']:.1f} ms, peak RSS {row['peak_rss_mib']:.0f} MiB, "
                f"cosine to torch min {syn.get('cosine_to_torch_min', 1.0)}, load {row['load_average'][0]}",
                flush=True,
            )
    print()
    print(
        "| backend | synthetic titles/s | per CPU-s | real titles/s | query p50/p95 ms | peak RSS MiB | cos min/mean | top-10 agreement |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['backend']} | failed: {r['error']} |")
            continue
        s, real = r["synthetic"], r.get("real", {})
        print(
            f"| {r['backend']} | {s['titles_per_s']:.0f} | {s['titles_per_cpu_s']:.0f} | {real.get('titles_per_s', '-')} | "
            f"{r['query_p50_ms']:.1f} / {r['query_p95_ms']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{s.get('cosine_to_torch_min', 1.0)} / {s.get('cosine_to_torch_mean', 1.0)} | {s.get('top10_agreement_with_torch', 1.0)} |"
        )
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        payload = {
            "benchmark": "embed",
            "environment": env,
            "titles": args.titles,
            "batch_size": args.batch_size,
            "results": results,
        }
        write_result(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
