"""`rag eval ...`: evaluation commands (registered into the `rag` command line by rag/cli.py).

    rag eval questions --data catalog.jsonl --out questions.jsonl --n 500 --seed 0
    rag eval retrieval --questions eval/sample_questions.jsonl --data ../shared/data/amazontitles/trn_sample.jsonl --out results/retrieval_sample.json
    rag eval answers   --questions eval/sample_questions.jsonl --data ../shared/data/amazontitles/trn_sample.jsonl --out results/answers_sample.json
    rag eval ablation  --questions q.jsonl --data catalog.jsonl --set generator.backend=hf --set generator.model=DIR --adapter ADAPTER_DIR

Each prints a Markdown table on stdout (and the machine it ran on) and, with `--out`, writes every
figure and every per-question record as JSON. With `--data` an index of that catalog is built on
first use into a cache directory (`--cache-dir`, default ~/.cache/amazontitles-rag/eval-indexes);
without it the configured `index.path` is used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rag.cli_common import UsageError, config_from_args, write_json


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluation in numbers: retrieval, answers, ablation, question generation"
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="WHAT")
    sub.required = True

    p = sub.add_parser(
        "questions", parents=[common], help="generate title-variant questions from a catalog (JSON lines)"
    )
    p.add_argument(
        "--data", required=True, nargs="+", metavar="CATALOG", help="catalog file(s) to draw products from"
    )
    p.add_argument("--out", required=True, help="question file to write (JSON lines)")
    p.add_argument("--n", type=int, default=500, help="number of questions (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kinds",
        default=None,
        help="comma-separated kinds (default: all of exact, lowercase, truncated, "
        "typo, template_en, template_pt)",
    )
    p.add_argument(
        "--placeholders",
        action="store_true",
        help="write {title...} placeholders and uids instead of title text (for catalogs that must not be copied)",
    )
    p.set_defaults(func=_cmd_questions)

    for name, helptext, func in (
        ("retrieval", "recall@1/5/10 and MRR per question kind", _cmd_retrieval),
        (
            "answers",
            "must_contain, cites-expected, ROUGE-L, grounding and latency of the answers",
            _cmd_answers,
        ),
        ("ablation", "base vs fine-tuned generator, each with and without retrieved context", _cmd_ablation),
    ):
        _run_options(sub.add_parser(name, parents=[common], help=helptext), name).set_defaults(func=func)


def _run_options(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The options of `rag eval retrieval|answers|ablation` (the question file, the index, the output)."""
    p.add_argument(
        "--questions", "-q", required=True, help="question file (JSON lines, see docs/evaluation.md)"
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=None,
        metavar="CATALOG",
        help="build (or reuse) an index of this catalog instead of using index.path",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where --data indexes are kept (default ~/.cache/amazontitles-rag/eval-indexes)",
    )
    p.add_argument(
        "--rebuild", action="store_true", help="rebuild the --data index even if a cached one exists"
    )
    p.add_argument("--out", default=None, help="write every figure and per-question record to this JSON file")
    p.add_argument(
        "--kinds",
        "--kind",
        dest="kinds",
        default=None,
        metavar="K1,K2",
        help="only questions of these comma-separated kinds",
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="only questions whose 'split' field is NAME (e.g. test)",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="only the first N questions (after --split and --kinds)"
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    p.add_argument(
        "--records",
        action="store_true",
        help="also write every question, hit and answer to --out (off by default: for the real "
        "sample they hold catalog text, which must not be committed)",
    )
    if name != "retrieval":
        p.add_argument(
            "-k", type=int, default=None, help="rows given to the generator (default: retrieval.k)"
        )
    if name == "answers":
        p.add_argument(
            "--no-context", action="store_true", help="answer without retrieved rows (use_context=False)"
        )
    if name == "ablation":
        p.add_argument(
            "--adapter",
            default=None,
            help="LoRA adapter of the fine-tuned model (default: generator.adapter); "
            "the base rows always run without one",
        )
    return p


# --------------------------------------------------------------------------- helpers


def _echo(text: str) -> None:
    print(text, file=sys.stderr)


def filter_questions(
    questions: list[Any],
    *,
    split: str | None = None,
    kinds: str | None = None,
    source: str = "the question file",
) -> list[Any]:
    """Keep the questions of one `split` and/or of the comma-separated `kinds`; none left is a usage error."""
    if split:
        questions = [q for q in questions if getattr(q, "split", None) == split]
        if not questions:
            raise UsageError(f"--split {split}: no question of this split in {source}")
    if kinds:
        wanted = {k.strip() for k in kinds.split(",") if k.strip()}
        questions = [q for q in questions if q.kind in wanted]
        if not questions:
            raise UsageError(
                f"--kinds {kinds}: no question of these kinds in {source}"
                + (f" (split {split})" if split else "")
            )
    return questions


def _load(args: argparse.Namespace) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    """(config, retriever, resolved questions, run info) for retrieval/answers/ablation."""
    from rag.evaluation.questions import load_questions
    from rag.evaluation.runner import environment, prepare_index, resolve_questions
    from rag.retrieval import Retriever

    config = config_from_args(args)
    questions = load_questions(args.questions)
    questions = filter_questions(
        questions, split=getattr(args, "split", None), kinds=args.kinds, source=str(args.questions)
    )
    if args.limit is not None:
        if args.limit <= 0:
            raise UsageError(f"--limit must be > 0, got {args.limit}")
        questions = questions[: args.limit]
    config = prepare_index(config, args.data, cache_dir=args.cache_dir, rebuild=args.rebuild, echo=_echo)
    retriever = Retriever.from_config(config)
    items = resolve_questions(questions, retriever.snapshot, warn=lambda m: _echo(f"warning: {m}"))
    info = {
        "command": "rag " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("rag") else None,
        "questions_file": str(args.questions),
        "questions": len(items),
        "data": args.data,
        "split": getattr(args, "split", None),
        "kinds": args.kinds,
        "index": _display_path(config.index.path),
        "index_rows": getattr(retriever.snapshot, "rows", None),
        "embedding_model": config.embedding.model,
        "generator": config.generator.backend,
        "generator_model": config.generator.model,
        "retrieval": dict(config.retrieval.__dict__),
        "environment": environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return config, retriever, items, info


def _display_path(path: str) -> str:
    """The path with the home folder shown as ~ (result files are committed; machine paths are not)."""
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + "/") else path


def _strip_records(payload: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in payload.items() if k != "questions"}
    if "variants" in out:
        out["variants"] = {
            n: {k: v for k, v in r.items() if k != "questions"} for n, r in out["variants"].items()
        }
    return out


def _write(out: str | None, payload: dict[str, Any], records: bool = False) -> None:
    if out:
        write_json(out, payload if records else _strip_records(payload), default=float)


def _header(info: dict[str, Any]) -> str:
    from rag.evaluation.runner import environment_line

    return (
        f"{info['questions']} questions from {info['questions_file']}; index {info['index']} "
        f"({info['index_rows']} rows, {info['embedding_model']}); {environment_line(info['environment'])}"
    )


# --------------------------------------------------------------------------- commands


def _cmd_questions(args: argparse.Namespace) -> int:
    from rag.catalog import read_catalog
    from rag.evaluation.questions import KINDS, generate_questions, write_questions

    config = config_from_args(args)
    rows, summary = read_catalog(args.data, config.catalog)
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else KINDS
    questions = generate_questions(
        rows, n=args.n, seed=args.seed, kinds=kinds, placeholders=args.placeholders
    )
    write_questions(args.out, questions)
    counts: dict[str, int] = {}
    for q in questions:
        counts[q.kind] = counts.get(q.kind, 0) + 1
    print(
        f"wrote {len(questions)} questions to {args.out} from {summary.accepted} rows "
        f"({', '.join(f'{k} {v}' for k, v in counts.items())})"
    )
    return 0


def _cmd_retrieval(args: argparse.Namespace) -> int:
    from rag.evaluation.runner import evaluate_retrieval, retrieval_table

    _config, retriever, items, info = _load(args)
    result = evaluate_retrieval(retriever, items, progress=args.progress)
    print(f"Retrieval: {_header(info)}\n")
    print(retrieval_table(result["summary"]))
    _write(args.out, {"kind": "retrieval", "info": info, **result}, args.records)
    return 0


def _cmd_answers(args: argparse.Namespace) -> int:
    from rag.evaluation.runner import answers_table, evaluate_answers
    from rag.pipeline import RAG

    config, retriever, items, info = _load(args)
    rag = RAG.from_config(config, retriever=retriever)
    result = evaluate_answers(rag, items, use_context=not args.no_context, k=args.k, progress=args.progress)
    context = "without context" if args.no_context else "with retrieved context"
    print(f"Answers ({rag.generator.name}, {context}): {_header(info)}\n")
    print(answers_table(result["summary"]))
    print(f"\n{len(items)} questions in {result['wall_s']:.1f} s (batch size {result['batch_size']})")
    _write(args.out, {"kind": "answers", "info": info, **result}, args.records)
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from rag.evaluation.runner import answers_table, run_ablation

    config, retriever, items, info = _load(args)
    adapter = args.adapter or config.generator.adapter
    if not adapter:
        _echo("warning: no --adapter and no generator.adapter: only the base-model rows are run")
    results = run_ablation(config, retriever, items, adapter, k=args.k, progress=args.progress, echo=_echo)
    info["adapter"] = adapter
    print(
        f"Ablation ({config.generator.backend} {config.generator.model or ''}, adapter {adapter}): {_header(info)}\n"
    )
    print(
        answers_table({name: r["summary"]["overall"] for name, r in results.items()}, first_column="variant")
    )
    _write(args.out, {"kind": "ablation", "info": info, "variants": results}, args.records)
    return 0
