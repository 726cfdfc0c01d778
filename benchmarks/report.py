"""Gather the JSON outputs in results/ into results/REPORT.md, with PNG plots next to it.

    .venv/bin/python benchmarks/report.py                 # results/*.json -> results/REPORT.md + results/*.png
    .venv/bin/python benchmarks/report.py --results other_dir
    rag bench report

Understands the files that `benchmarks/bench_query.py --out` ("benchmark": "query") and
`rag eval retrieval|answers|ablation --out` ("kind": ...) write; any other JSON file (the other
benchmarks' outputs) is shown as a generic table of its scalar figures and of its first list of
records. Plots: retrieval latency against rows (log scale), recall@k per question kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.evaluation.runner import answers_table, environment_line, retrieval_table


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def query_section(name: str, data: dict[str, Any], out_dir: Path) -> list[str]:
    results = data.get("results", [])
    lines = [f"## Retrieval latency vs rows ({name})", "", environment_line(data.get("environment", {})), ""]
    lines.append(
        f"Embedding model {data.get('embedding_model')}; {data.get('embed_rows'):,} real title vectors; "
        f"rows above that are perturbed copies (noise {data.get('noise')}); top-{data.get('k')}."
    )
    emb = data.get("embedding", {})
    if emb.get("titles_per_s"):
        lines.append(f"Title embedding throughput: {emb['titles_per_s']:.0f} titles/s.")
    lines += [
        "",
        "| rows | index | total p50 ms | total p95 ms | embed p50 ms | search p50 ms | search p95 ms | hit@k | build s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        hit = next((v for k, v in r.items() if k.startswith("hit@")), float("nan"))
        lines.append(
            f"| {r['rows']:,} | {r['index_type']} | {r['total_p50_ms']:.1f} | {r['total_p95_ms']:.1f} | "
            f"{r['embed_p50_ms']:.1f} | {r['search_p50_ms']:.2f} | {r['search_p95_ms']:.2f} | {hit:.2f} | {r['build_s']:.1f} |"
        )
    if results:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 4))
        for index_type in sorted({r["index_type"] for r in results}):
            rows = [r for r in results if r["index_type"] == index_type]
            xs = [r["rows"] for r in rows]
            ax.plot(xs, [r["total_p50_ms"] for r in rows], marker="o", label=f"{index_type} total p50")
            ax.plot(
                xs,
                [r["total_p95_ms"] for r in rows],
                marker="o",
                linestyle="--",
                label=f"{index_type} total p95",
            )
            ax.plot(xs, [r["search_p50_ms"] for r in rows], marker="s", label=f"{index_type} search p50")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows in the index")
        ax.set_ylabel("latency per query (ms)")
        ax.set_title("Retrieval latency (query embedding + FAISS)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        png = out_dir / f"{name}_latency.png"
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
        lines += ["", f"![latency vs rows]({png.name})"]
    return lines


def eval_section(name: str, data: dict[str, Any], out_dir: Path) -> list[str]:
    info = data.get("info", {})
    lines = [f"## {data['kind'].capitalize()} evaluation ({name})", ""]
    if info:
        lines += [
            (
                f"{info.get('questions')} questions from `{info.get('questions_file')}`, index of "
                f"{info.get('index_rows')} rows ({info.get('embedding_model')}), generator {info.get('generator')} "
                f"{info.get('generator_model') or ''}"
            ),
            "",
            environment_line(info.get("environment", {})),
            "",
        ]
    if data["kind"] == "retrieval":
        summary = data["summary"]
        lines.append(retrieval_table(summary, data.get("ks", (1, 5, 10))))
        plt = _plt()
        kinds = list(summary)
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(data.get("ks", (1, 5, 10)))
        for i, k in enumerate(data.get("ks", (1, 5, 10))):
            ax.bar(
                [x + i * width for x in range(len(kinds))],
                [summary[n][f"recall@{k}"] for n in kinds],
                width,
                label=f"recall@{k}",
            )
        ax.set_xticks([x + width for x in range(len(kinds))], kinds, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title("Retrieval recall by question kind")
        ax.legend(fontsize=8)
        fig.tight_layout()
        png = out_dir / f"{name}_recall.png"
        fig.savefig(png, dpi=120)
        plt.close(fig)
        lines += ["", f"![recall by kind]({png.name})"]
    elif data["kind"] == "answers":
        lines.append(answers_table(data["summary"]))
    elif data["kind"] == "ablation":
        lines.append(
            answers_table(
                {n: r["summary"]["overall"] for n, r in data["variants"].items()}, first_column="variant"
            )
        )
    return lines


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def generic_section(name: str, data: Any) -> list[str]:
    lines = [f"## {name}", ""]
    if not isinstance(data, dict):
        return [*lines, "(not a JSON object)"]
    scalars = {k: v for k, v in data.items() if _scalar(v)}
    if scalars:
        lines += ["| figure | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in scalars.items()]
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = [c for c in value[0] if _scalar(value[0][c])][:10]
            lines += ["", f"**{key}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            for record in value[:30]:
                lines.append("| " + " | ".join(_short(record.get(c)) for c in columns) + " |")
            break
    return lines


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_report(results_dir: Path) -> Path:
    sections: list[str] = [
        "# Evaluation and benchmark report",
        "",
        f"Generated by `benchmarks/report.py` from the JSON files in `{results_dir.name}/`.",
        "",
    ]
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            sections += [f"## {path.name}", "", f"could not be read: {exc}", ""]
            continue
        name = path.stem
        if isinstance(data, dict) and data.get("benchmark") == "query":
            sections += query_section(name, data, results_dir)
        elif isinstance(data, dict) and data.get("kind") in ("retrieval", "answers", "ablation"):
            sections += eval_section(name, data, results_dir)
        else:
            sections += generic_section(name, data)
        sections.append("")
    out = results_dir / "REPORT.md"
    out.write_text("\n".join(sections) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="results/*.json -> results/REPORT.md + PNG plots")
    parser.add_argument(
        "--results", default="results", help="folder holding the JSON outputs (default results/)"
    )
    args = parser.parse_args(argv)
    results_dir = Path(args.results)
    if not results_dir.is_dir():
        print(
            f"error: {results_dir}: no such folder; run benchmarks with --out {results_dir}/NAME.json first",
            file=sys.stderr,
        )
        return 2
    out = build_report(results_dir)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
