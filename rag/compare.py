"""`rag compare`: answer the same questions with several configurations, side by side in Markdown.

    rag compare --questions questions.txt --configs configs/default.yaml configs/finetuned.yaml
    rag compare --questions q.jsonl --configs configs/default.yaml configs/default.yaml \\
        --set-b generator.backend=hf --set-b generator.adapter=runs/finetune/adapter --out compare.md
    rag compare --questions q.txt --context both          # one config, with and without retrieved rows

Every column runs through the serving code itself (`rag.pipeline.RAG.answer`), so the table shows
what `rag ask`, `rag chat` and the API would answer. Columns are lettered a, b, c, ... in the
order of `--configs`; `--set` applies to every column, `--set-a`/`--set-b`/... to one column.
`--context both` adds, for each configuration, a column answered without retrieval
(`use_context=False`), which shows what the model says from its weights alone.

Questions: a .txt file (one question per line; blank lines and lines starting with # are skipped),
a .jsonl file (one object per line with a "question" field), or a .json list of strings/objects.
"""

from __future__ import annotations

import argparse
import json
import logging
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.cli_common import write_json, write_output
from rag.config import Config, ConfigError, load_config
from rag.types import Answer

log = logging.getLogger(__name__)

COLUMN_LETTERS = string.ascii_lowercase[:8]  # --set-a ... --set-h
MAX_QUESTIONS = 1000


@dataclass
class Variant:
    """One column of the table: a configuration, and whether retrieval feeds the prompt."""

    label: str
    config: Config
    use_context: bool = True
    key: str = ""  # variants with the same key share one RAG (same config, context on/off)


@dataclass
class Cell:
    answer: Answer | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class CompareResult:
    questions: list[str]
    variants: list[Variant]
    cells: list[list[Cell]] = field(default_factory=list)  # [question][variant]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variants": [
                {"label": v.label, "use_context": v.use_context, "generator": v.config.generator.backend}
                for v in self.variants
            ],
            "rows": [
                {
                    "question": q,
                    "answers": [
                        {
                            "label": v.label,
                            "error": c.error,
                            "seconds": round(c.seconds, 4),
                            **({"answer": c.answer.to_dict()} if c.answer else {}),
                        }
                        for v, c in zip(self.variants, row, strict=True)
                    ],
                }
                for q, row in zip(self.questions, self.cells, strict=True)
            ],
        }


# --------------------------------------------------------------------------- inputs


def read_questions(path: str | Path) -> list[str]:
    """Questions from .txt (one per line), .jsonl ({"question": ...} per line) or .json (a list)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--questions {path}: file not found")
    text = path.read_text(encoding="utf-8")
    questions: list[str] = []
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            questions.append(_question_of(item, f"{path}:{number}"))
    elif suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(items, list):
            raise ValueError(
                f'{path}: expected a JSON list of questions (strings or objects with "question")'
            )
        questions = [_question_of(item, f"{path}[{i}]") for i, item in enumerate(items)]
    else:
        questions = [
            line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if not questions:
        raise ValueError(f"{path}: no questions found")
    if len(questions) > MAX_QUESTIONS:
        raise ValueError(f"{path}: {len(questions)} questions; `rag compare` takes at most {MAX_QUESTIONS}")
    return questions


def _question_of(item: Any, where: str) -> str:
    if isinstance(item, str) and item.strip():
        return item.strip()
    if isinstance(item, dict) and isinstance(item.get("question"), str) and item["question"].strip():
        return item["question"].strip()
    raise ValueError(f'{where}: expected a question string or an object with a non-empty "question" field')


def build_variants(
    config_paths: Sequence[str | None],
    overrides: Sequence[str] = (),
    column_overrides: dict[str, list[str]] | None = None,
    context: str = "with",
) -> list[Variant]:
    """One Variant per config path (None = defaults), lettered a, b, ...; context: with|without|both."""
    column_overrides = column_overrides or {}
    if not config_paths:
        config_paths = [None]
    if len(config_paths) > len(COLUMN_LETTERS):
        raise ConfigError(
            [f"--configs: at most {len(COLUMN_LETTERS)} configurations, got {len(config_paths)}"]
        )
    unused = sorted({k for k, v in column_overrides.items() if v} - set(COLUMN_LETTERS[: len(config_paths)]))
    if unused:
        raise ConfigError(
            [
                f"--set-{letter}: there is no configuration {letter} (--configs lists {len(config_paths)})"
                for letter in unused
            ]
        )
    if context not in ("with", "without", "both"):
        raise ConfigError([f"--context: expected with, without or both, got {context!r}"])
    variants: list[Variant] = []
    errors: list[str] = []
    for letter, path in zip(COLUMN_LETTERS, config_paths, strict=False):
        own = column_overrides.get(letter, [])
        try:
            config = load_config(path, [*overrides, *own])
        except ConfigError as exc:
            errors += [f"column {letter}: {e}" for e in exc.errors]
            continue
        name = Path(path).stem if path else "defaults"
        label = f"{letter}: {name}" + (f" ({', '.join(own)})" if own else "")
        contexts = {"with": [True], "without": [False], "both": [True, False]}[context]
        for use_context in contexts:
            suffix = "" if use_context else ", no context"
            variants.append(Variant(label=label + suffix, config=config, use_context=use_context, key=letter))
    if errors:
        raise ConfigError(errors)
    return variants


# --------------------------------------------------------------------------- running


def _default_rag_factory(config: Config) -> Any:
    """RAG.from_config: the index of `index.path` and the generator the config names."""
    from rag.pipeline import RAG

    return RAG.from_config(config)


def run_compare(
    questions: Sequence[str],
    variants: Sequence[Variant],
    *,
    k: int | None = None,
    rag_factory: Callable[[Config], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompareResult:
    """Answer every question with every variant through `RAG` (one RAG per configuration); a
    generator that batches (`hf`) answers generator.batch_size questions at a time.

    A failure inside one answer (a server down, a generation error) fills that cell with the error
    and the comparison goes on; failing to build a configuration's RAG stops it.
    """
    factory = rag_factory or _default_rag_factory
    rags: dict[str, Any] = {}
    for variant in variants:
        if variant.key not in rags:
            rags[variant.key] = factory(variant.config)
            warm_up = getattr(rags[variant.key].generator, "warm_up", None)
            if callable(warm_up):
                warm_up()  # load weights now, so the first cell's time is not the loading time
    result = CompareResult(list(questions), list(variants))
    cells: list[list[Cell | None]] = [[None] * len(variants) for _ in questions]
    for vi, variant in enumerate(variants):
        rag = rags[variant.key]
        batched = hasattr(rag, "answer_many") and hasattr(getattr(rag, "generator", None), "generate_batch")
        size = max(1, int(rag.config.generator.batch_size)) if batched else 1
        for start in range(0, len(questions), size):
            chunk = list(questions[start : start + size])
            if progress:
                progress(f"[{start + len(chunk)}/{len(questions)}] {variant.label}")
            if size > 1:
                started = time.perf_counter()
                try:
                    answers = rag.answer_many(chunk, k=k, use_context=variant.use_context, batch_size=size)
                except Exception:
                    log.debug(
                        "compare: batch of %s failed; answering one at a time", variant.label, exc_info=True
                    )
                else:
                    seconds = (time.perf_counter() - started) / len(chunk)
                    for j, answer in enumerate(answers):
                        cells[start + j][vi] = Cell(answer=answer, seconds=seconds)
                    continue
            for j, question in enumerate(chunk):
                cells[start + j][vi] = _one_cell(rag, question, variant, k)
    result.cells = [[cell for cell in row if cell is not None] for row in cells]
    return result


def _one_cell(rag: Any, question: str, variant: Variant, k: int | None) -> Cell:
    started = time.perf_counter()
    try:
        answer = rag.answer(question, k=k, use_context=variant.use_context)
        return Cell(answer=answer, seconds=time.perf_counter() - started)
    except Exception as exc:
        log.debug("compare: %s failed on %r", variant.label, question, exc_info=True)
        return Cell(error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- output


def _md(text: str) -> str:
    """Make text safe inside one Markdown table cell."""
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    # every line boundary str.splitlines knows (\v, \x85, \u2028, ...), not only \n, would break the row
    return "<br>".join(line.strip() for line in text.splitlines()).strip()


def _clip(text: str, max_chars: int | None) -> str:
    if max_chars and len(text) > max_chars:
        return text[: max_chars - 1].rstrip() + "…"
    return text


def format_cell(
    cell: Cell, *, sources: bool = True, max_chars: int | None = None, max_sources: int = 3
) -> str:
    if cell.error:
        return _md(f"**error**: {_clip(cell.error, 300)}")
    answer = cell.answer
    assert answer is not None
    parts = [_md(_clip(answer.text, max_chars)) or "*(empty)*"]
    if answer.unsupported_sentences:
        n = len(answer.unsupported_sentences)
        parts.append(f"*({n} unsupported sentence{'s' if n != 1 else ''})*")
    if sources:
        if answer.sources:
            listed = "; ".join(
                f"[{i}] {_md(s.title)} ({_md(s.uid)})" for i, s in enumerate(answer.sources[:max_sources], 1)
            )
            more = f"; +{len(answer.sources) - max_sources}" if len(answer.sources) > max_sources else ""
            parts.append(f"<sub>Sources: {listed}{more}</sub>")
        else:
            parts.append("<sub>Sources: none</sub>")
    return "<br>".join(parts)


def to_markdown(result: CompareResult, *, sources: bool = True, max_chars: int | None = None) -> str:
    """The comparison table (question | one column per variant) and a per-variant summary."""
    header = ["question", *(v.label for v in result.variants)]
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    for question, row in zip(result.questions, result.cells, strict=True):
        cells = [_md(question), *(format_cell(c, sources=sources, max_chars=max_chars) for c in row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| configuration | generator | context | answered | grounded | mean seconds |",
        "|---|---|---|---|---|---|",
    ]
    for j, variant in enumerate(result.variants):
        column = [row[j] for row in result.cells]
        answered = [c.answer for c in column if c.answer is not None]
        grounded = sum(1 for a in answered if a.grounded)
        mean = sum(c.seconds for c in column) / len(column) if column else 0.0
        lines.append(
            f"| {_md(variant.label)} | {variant.config.generator.backend} | "
            f"{'yes' if variant.use_context else 'no'} | {len(answered)}/{len(column)} | "
            f"{grounded}/{len(answered)} | {mean:.3f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def _cmd_compare(args: argparse.Namespace) -> int:
    questions = read_questions(args.questions)
    paths = list(args.configs or ([args.config] if args.config else [None]))
    column_overrides = {letter: list(getattr(args, f"set_{letter}") or []) for letter in COLUMN_LETTERS}
    variants = build_variants(paths, args.overrides, column_overrides, args.context)
    progress = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    result = run_compare(questions, variants, k=args.k, progress=progress)
    table = to_markdown(result, sources=not args.no_sources, max_chars=args.max_chars)
    print(table, end="")
    if args.out:
        write_output(args.out, table)
    if args.json:
        write_json(args.json, result.to_dict())
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "compare",
        parents=[common],
        help="answer the same questions with several configs (or with/without context) in a Markdown table",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--questions", "-q", required=True, metavar="FILE", help="questions: .txt, .jsonl or .json"
    )
    p.add_argument(
        "--configs",
        nargs="+",
        metavar="YAML",
        help="one column per config, lettered a, b, ... (default: --config, or the defaults)",
    )
    for letter in COLUMN_LETTERS:
        p.add_argument(
            f"--set-{letter}",
            dest=f"set_{letter}",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=argparse.SUPPRESS
            if letter not in "ab"
            else f"override for column {letter} only (repeatable; --set-c ... --set-h likewise)",
        )
    p.add_argument(
        "--context",
        choices=["with", "without", "both"],
        default="with",
        help="answer with retrieved rows (default), without, or both side by side",
    )
    p.add_argument(
        "-k", type=int, default=None, help="rows to retrieve (default: retrieval.k of each config)"
    )
    p.add_argument("--out", metavar="FILE", help="also write the Markdown table to FILE")
    p.add_argument("--json", metavar="FILE", help="also write every answer (text, sources, timings) as JSON")
    p.add_argument("--no-sources", action="store_true", help="leave the sources out of the cells")
    p.add_argument(
        "--max-chars", type=int, default=None, help="clip each answer to N characters in the table"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_compare)
