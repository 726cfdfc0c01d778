"""Benchmark: the real SmolLM2-135M-Instruct answering through `rag.answer(stream=True)` on this machine.

    .venv/bin/python benchmarks/bench_real_model.py                          # base model, bundled index
    .venv/bin/python benchmarks/bench_real_model.py --set generator.adapter=runs/smollm2-cpu/adapter

Prints, per question: time to the first streamed piece, total time, new tokens, tokens/s after the
first token, finish reason and the answer; then the model load time and p50 figures. Uses
configs/smollm2-chat.yaml (any --config / --set overrides it). `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_result

QUESTIONS = [
    "Who wrote The Lighthouse Keeper's Daughter?",
    "What is Seven Sleepy Kittens about?",
    "Who wrote City of Djinns: A Year in Delhi?",
    "For what ages is Seven Sleepy Kittens?",
    "Quem escreveu The Lighthouse Keeper's Daughter?",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smollm2-chat.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from rag.config import load_config
    from rag.evaluation.runner import environment
    from rag.pipeline import RAG

    config = load_config(args.config, ["generator.grounding_fallback=none", *args.set])
    started = time.perf_counter()
    pipeline = RAG.from_config(config)
    pipeline.generator.warm_up()
    load_s = time.perf_counter() - started
    rows = []
    for question in QUESTIONS:
        t0 = time.perf_counter()
        stream = pipeline.answer(question, stream=True)
        first = None
        for _ in stream:
            if first is None:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        answer = stream.answer
        tokens = answer.new_tokens or 0
        rate = (tokens - 1) / (total - first) if first is not None and tokens > 1 and total > first else None
        rows.append(
            {
                "question": question,
                "first_piece_s": first,
                "total_s": total,
                "new_tokens": tokens,
                "tokens_per_s": rate,
                "finish_reason": answer.finish_reason,
                "answer": answer.text,
                "sources": [s.title for s in answer.sources],
            }
        )
        print(
            f"{question}\n  first piece {first:.2f} s, total {total:.2f} s, {tokens} tokens"
            f"{f', {rate:.1f} tokens/s' if rate else ''}, finish {answer.finish_reason}\n  {answer.text[:300]}"
        )
    firsts = [r["first_piece_s"] for r in rows if r["first_piece_s"] is not None]
    rates = [r["tokens_per_s"] for r in rows if r["tokens_per_s"]]
    summary = {
        "load_s": load_s,
        "p50_first_piece_s": statistics.median(firsts),
        "p50_tokens_per_s": statistics.median(rates) if rates else None,
        "stopped": sum(r["finish_reason"] == "stop" for r in rows),
        "n": len(rows),
    }
    print(json.dumps({"summary": summary, "machine": environment()}, indent=2))
    if args.out:
        write_result(args.out, {"summary": summary, "rows": rows, "machine": environment()}, announce=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
