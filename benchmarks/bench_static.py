"""Benchmark: the static embedding backend (model2vec, distilled from MiniLM) against the default embedder.

    .venv/bin/rag index distill-static                                      # once (a few minutes)
    .venv/bin/python benchmarks/bench_static.py --out results/bench_static.json
    .venv/bin/python benchmarks/bench_static.py --build-rows 0 --titles 1000 --rounds 2    # quick

"default" is whatever the project's defaults are when it runs (`load_config(None)`: its
embedding.backend is printed and recorded), "static" is the same with `embedding.backend=static`.
Three parts, in one run:

1. **Throughput**: both embedders loaded in this process, in interleaved rounds over the same
   real-length synthetic titles (`rag.synthetic`); titles/s by wall clock and per CPU-second of this
   process (on a shared machine the wall figure mostly measures the other jobs), and single-question
   latency (uncached) p50/p95.
2. **Quality on the real sample**: recall@1/5/10 and MRR per question kind on
   `eval/sample_questions.jsonl` over the 300-row sample, with the retrieval settings as served (dense
   + lexical title + description fusion), as `rag eval retrieval` computes them; "named" is every kind
   that names the product (exact, lowercase, truncated, typo, template_en, template_pt).
3. **A bulk build** (`--build-rows`, default 100,000; 0 skips it): a `rag synth` catalog indexed by
   `rag index build` in a subprocess per backend (static, default, static again: the second static
   build shows how much the machine's load drifted), timed end to end and in the embedding stage,
   with peak RSS; then recall on `--questions` (500) title-variant questions generated from that catalog.

Prints the figures and the load average; `--out` writes JSON (no catalog text).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import peak_rss_vmhwm_mb, write_result  # noqa: E402 - after the path

STATIC = ["embedding.backend=static"]
NAMED = ("exact", "lowercase", "truncated", "typo", "template_en", "template_pt")


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _titles(n: int, seed: int = 0) -> list[str]:
    from rag.cleaning import clean_title
    from rag.synthetic import generate_records

    return [clean_title(r["title"]) for r in generate_records(n, seed=seed)]


# --------------------------------------------------------------------------- 1. throughput


def throughput(args: argparse.Namespace, variants: dict[str, list[str]]) -> dict[str, Any]:
    from index.embedder import load_embedder
    from rag.config import load_config

    titles = _titles(args.titles)
    embedders = {
        name: load_embedder(load_config(None, overrides).embedding) for name, overrides in variants.items()
    }
    # the static backend is ~100x faster: it embeds the same titles several times per round to be timeable
    repeat = {name: (args.static_repeat if name == "static" else 1) for name in embedders}
    for e in embedders.values():
        e.embed(titles[:64])  # warm-up: first-call allocations and thread pools
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in embedders}
    for _round in range(args.rounds):
        for name, e in embedders.items():  # interleaved: each round runs both back to back
            work = titles * repeat[name]
            wall, cpu = time.perf_counter(), time.process_time()
            vectors = e.embed(work)
            samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            assert vectors.shape[0] == len(work)
    questions = [f"who wrote {t}?" for t in titles[: args.queries]]
    latency: dict[str, list[float]] = {name: [] for name in embedders}
    for q in questions:
        for name, e in embedders.items():
            started = time.perf_counter()
            e.embed([q])  # embed, not embed_query: the LRU cache would time a dictionary look-up
            latency[name].append(time.perf_counter() - started)
    out: dict[str, Any] = {"titles": len(titles), "rounds": args.rounds, "backends": {}}
    for name, runs in samples.items():
        n = len(titles) * repeat[name]
        walls = [w for w, _ in runs]
        cpus = [c for _, c in runs]
        out["backends"][name] = {
            "embedder": embedders[name].name,
            "dimension": embedders[name].dimension,
            "titles_per_round": n,
            "titles_per_s_median": round(n / float(np.median(walls)), 1),
            "titles_per_s_best": round(n / min(walls), 1),
            "titles_per_cpu_s": round(n / float(np.median(cpus)), 1) if min(cpus) > 0 else None,
            "query_p50_ms": round(float(np.percentile(latency[name], 50)) * 1000, 3),
            "query_p95_ms": round(float(np.percentile(latency[name], 95)) * 1000, 3),
        }
    base, fast = out["backends"]["default"], out["backends"]["static"]
    out["static_vs_default_titles_per_s"] = round(
        fast["titles_per_s_median"] / base["titles_per_s_median"], 1
    )
    return out


# --------------------------------------------------------------------------- 2. recall


def _named_row(records: list[dict[str, Any]], ks: list[int]) -> dict[str, Any]:
    from rag.evaluation.metrics import mrr, recall_at_k

    ranks = [r["rank"] for r in records if r["kind"] in NAMED]
    row: dict[str, Any] = {"n": len(ranks)}
    for k in ks:
        row[f"recall@{k}"] = recall_at_k(ranks, k)
    row["mrr"] = mrr(ranks)
    return row


def _evaluate(config: Any, questions: list[Any]) -> dict[str, Any]:
    from rag.evaluation.runner import evaluate_retrieval, resolve_questions
    from rag.retrieval import Retriever

    retriever = Retriever.from_config(config)
    items = resolve_questions(
        questions, retriever.snapshot, warn=lambda m: print("warning:", m, file=sys.stderr)
    )
    result = evaluate_retrieval(retriever, items)
    summary = {
        kind: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        for kind, row in result["summary"].items()
    }
    summary["named"] = {
        k: (round(v, 4) if isinstance(v, float) else v)
        for k, v in _named_row(result["questions"], result["ks"]).items()
    }
    return summary


def sample_recall(args: argparse.Namespace, variants: dict[str, list[str]], work: Path) -> dict[str, Any]:
    from rag.config import load_config
    from rag.evaluation.questions import load_questions
    from rag.evaluation.runner import prepare_index

    questions = load_questions(args.questions_file)
    out: dict[str, Any] = {"questions_file": args.questions_file, "data": args.sample, "backends": {}}
    for name, overrides in variants.items():
        config = prepare_index(
            load_config(None, overrides),
            [args.sample],
            cache_dir=work / "eval-indexes",
            rebuild=True,
            echo=lambda _m: None,
        )
        out["backends"][name] = _evaluate(config, questions)
    return out


# --------------------------------------------------------------------------- 3. bulk build


def child_build(args: argparse.Namespace) -> int:
    """In a subprocess: one `rag index build`, its figures as one JSON line on stdout."""
    from index.build import build_index
    from rag.config import load_config

    config = load_config(None, [*args.set, f"index.path={args.index}"])
    wall, cpu = time.perf_counter(), time.process_time()
    report = build_index(config, [args.data], progress=False)
    print(
        json.dumps(
            {
                "rows": report.rows,
                "seconds": round(time.perf_counter() - wall, 2),
                "cpu_seconds": round(time.process_time() - cpu, 2),
                "embed_seconds": round(report.embed_seconds, 2),
                "embedding_titles_per_s": round(report.titles_per_s, 1),
                "end_to_end_rows_per_s": round(report.rows / (time.perf_counter() - wall), 1),
                "index_type": report.index_type,
                "model": report.embedding_model,
                "peak_rss_mb": peak_rss_vmhwm_mb(),
            }
        )
    )
    return 0


def bulk_build(args: argparse.Namespace, variants: dict[str, list[str]], work: Path) -> dict[str, Any]:
    from rag.catalog import read_catalog
    from rag.config import load_config
    from rag.evaluation.questions import generate_questions

    data = work / "synthetic.jsonl"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rag.cli", "synth", "--rows", str(args.build_rows), "--out", str(data)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    out: dict[str, Any] = {
        "rows": args.build_rows,
        "synth_seconds": round(time.perf_counter() - started, 1),
        "runs": [],
    }
    order = ["static", "default", "static"]
    for i, name in enumerate(order):
        index = work / f"index-{name}-{i}"
        command = [sys.executable, __file__, "--child-build", "--data", str(data), "--index", str(index)]
        for item in variants[name]:
            command += ["--set", item]
        load_before = _load_avg()
        done = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        figures.update(backend=name, load_average_before=load_before, load_average_after=_load_avg())
        out["runs"].append(figures)
        print(
            f"  build {name:8} {figures['rows']:,} rows in {figures['seconds']:.1f} s, embedding "
            f"{figures['embed_seconds']:.1f} s ({figures['embedding_titles_per_s']:,.0f} titles/s), "
            f"peak RSS {figures['peak_rss_mb']:.0f} MB, load {load_before[0]}",
            flush=True,
        )
    rows, _summary = read_catalog([data], load_config(None).catalog)
    questions = generate_questions(rows, n=args.questions, seed=0)
    del rows
    out["questions"] = len(questions)
    out["recall"] = {}
    for i, name in enumerate(order[:2]):
        config = load_config(None, [*variants[name], f"index.path={work / f'index-{name}-{i}'}"])
        out["recall"][name] = _evaluate(config, questions)
    return out


# --------------------------------------------------------------------------- report


def _recall_table(recall: dict[str, Any]) -> str:
    kinds = [k for k in recall["default"] if k not in ("overall", "named")] + ["named", "overall"]
    lines = [
        "| kind | n | default R@1 / R@5 | static R@1 / R@5 | Δ R@1 / Δ R@5 (points) |",
        "|---|---:|---|---|---|",
    ]
    for kind in kinds:
        a, b = recall["default"].get(kind), recall["static"].get(kind)
        if not a or not b:
            continue
        d1 = (b["recall@1"] - a["recall@1"]) * 100
        d5 = (b["recall@5"] - a["recall@5"]) * 100
        lines.append(
            f"| {kind} | {a['n']} | {a['recall@1']:.3f} / {a['recall@5']:.3f} | {b['recall@1']:.3f} / "
            f"{b['recall@5']:.3f} | {d1:+.1f} / {d5:+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--titles", type=int, default=3000, help="titles per throughput round (default 3000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--static-repeat", type=int, default=20, help="static embeds the titles this many times a round"
    )
    parser.add_argument(
        "--queries", type=int, default=200, help="single-question latency samples per backend"
    )
    parser.add_argument("--questions-file", default="eval/sample_questions.jsonl")
    parser.add_argument("--sample", default=str(ROOT.parent / "shared/data/amazontitles/trn_sample.jsonl"))
    parser.add_argument("--build-rows", type=int, default=100_000, help="rows of the bulk build (0: skip it)")
    parser.add_argument(
        "--questions", type=int, default=500, help="generated questions for the bulk build's recall"
    )
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    parser.add_argument("--child-build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child_build:
        return child_build(args)

    from index.static_embedder import static_model_dir
    from rag.config import load_config
    from rag.evaluation.runner import environment, environment_line

    defaults = load_config(None)
    if not static_model_dir(load_config(None, STATIC).embedding).is_dir():
        print("error: no distilled static model: run `rag index distill-static` once", file=sys.stderr)
        return 2
    variants = {"default": [], "static": STATIC}
    result: dict[str, Any] = {
        "benchmark": "bench_static",
        "command": "python benchmarks/bench_static.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "default_embedding": {"model": defaults.embedding.model, "backend": defaults.embedding.backend},
        "index_type_default": defaults.index.type,
        "environment": environment(),
        "load_average_start": _load_avg(),
    }
    print(environment_line(result["environment"]))
    print(f"default: embedding.backend={defaults.embedding.backend}; static: {' '.join(STATIC)}\n")

    result["throughput"] = t = throughput(args, variants)
    for name, row in t["backends"].items():
        print(
            f"throughput {name:8} {row['titles_per_s_median']:>10,.0f} titles/s (best {row['titles_per_s_best']:,.0f}, "
            f"{row['titles_per_cpu_s'] or 0:,.0f} per CPU-s), query p50 {row['query_p50_ms']:.2f} ms "
            f"p95 {row['query_p95_ms']:.2f} ms  [{row['embedder']}, {row['dimension']}-d]"
        )
    print(f"static / default titles/s: {t['static_vs_default_titles_per_s']}x\n")

    with tempfile.TemporaryDirectory(prefix="bench-static-") as tmp:
        work = Path(tmp)
        result["sample_recall"] = s = sample_recall(args, variants, work)
        print(f"recall on {args.questions_file} over the 300-row sample (fused with BM25, as served):")
        print(_recall_table(s["backends"]) + "\n")
        if args.build_rows > 0:
            print(f"bulk build of {args.build_rows:,} synthetic rows (one subprocess each):", flush=True)
            result["bulk_build"] = b = bulk_build(args, variants, work)
            print(f"recall on {b['questions']} questions generated from that catalog:")
            print(_recall_table(b["recall"]) + "\n")
    result["load_average_end"] = _load_avg()
    named = s["backends"]
    verdict = {
        kind: round((named["static"][kind]["recall@1"] - named["default"][kind]["recall@1"]) * 100, 1)
        for kind in ("named", "described")
        if kind in named["default"]
    }
    result["static_minus_default_recall_at_1_points"] = verdict
    result["holds_within_2_points"] = all(v >= -2.0 for v in verdict.values())
    print(
        f"static - default recall@1 on the sample: {verdict} points -> within 2 points: {result['holds_within_2_points']}"
    )
    print(f"load average start {result['load_average_start']} end {result['load_average_end']}")
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
