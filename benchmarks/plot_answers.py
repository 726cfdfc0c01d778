"""Plot: answer metrics of several `rag eval answers --out` files side by side (one bar group per metric).

    .venv/bin/python benchmarks/plot_answers.py --out docs/img/smollm2_heldout.png \\
        --title "Held-out products, fact questions, with retrieved context (one H200, run 3)" \\
        base=results/smollm2/run3/cuda_base_heldout.json tuned=results/smollm2/run3/cuda_ft_heldout.json \\
        "tuned + fallback=results/smollm2/run3/cuda_ft_heldout_fallback.json" \\
        extractive=results/smollm2/run3/grid/cuda_extractive_heldout.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = [
    ("must_contain", "must_contain"),
    ("cites_expected", "cites expected"),
    ("rouge_l", "ROUGE-L"),
    ("grounded", "grounded"),
    ("stop_rate", "stop rate"),
    ("false_abstention", "false abstention"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FILE")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="Held-out products, fact questions, with retrieved context")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for item in args.runs:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: expected LABEL=FILE")
        runs.append((label, json.loads(Path(path).read_text(encoding="utf-8"))["summary"]["overall"]))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(runs)
    for i, (label, summary) in enumerate(runs):
        values = [float(summary.get(key) or 0.0) for key, _ in METRICS]
        bars = ax.bar([m + i * width for m in range(len(METRICS))], values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(
        [m + width * (len(runs) - 1) / 2 for m in range(len(METRICS))], [name for _, name in METRICS]
    )
    ax.set_ylim(0, 1.1)
    ax.set_title(args.title + f" (n={int(runs[0][1]['n'])})")
    ax.legend(fontsize=8, ncol=len(runs), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
