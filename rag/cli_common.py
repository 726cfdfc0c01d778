"""What every `rag` subcommand module shares: the common options, config loading, user errors, output files.

The registry (rag/cli.py) imports the subcommand modules (index/cli.py, finetune/cli.py, api/cli.py,
rag/evaluation/cli.py, rag/compare.py, rag/bench.py); they import this module, never the registry
nor each other (tests/test_layering.py). Nothing heavy is imported here.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Any

from rag.config import Config, load_config


class UsageError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config (see configs/); defaults apply when omitted"
    )
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set retrieval.k=8 (repeatable)",
    )
    common.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    return common


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None), getattr(args, "overrides", None))


def check_question(question: str, what: str = "the question") -> str:
    """A question from the command line, checked before anything loads: UTF-8, not empty, not too long."""
    from rag.pipeline import MAX_QUESTION_CHARS

    try:
        question.encode("utf-8")
    except UnicodeEncodeError as exc:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise UsageError(
            f"{what} is not valid UTF-8 (character {exc.start + 1}); pass it as UTF-8 text"
        ) from None
    if not question.strip():
        raise UsageError(
            f'{what} is empty: ask something about a product, e.g. rag ask "who wrote City of Djinns?"'
        )
    if len(question) > MAX_QUESTION_CHARS:
        raise UsageError(f"{what} is {len(question):,} characters; the limit is {MAX_QUESTION_CHARS:,}")
    return question


ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EMFILE,
}


def describe_os_error(exc: OSError) -> str:
    """One line naming the file: `path: No space left on device` (plus what to do for a full disk)."""
    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += (
            "; free space (e.g. `rag index gc --keep 1`) and run the command again; an unfinished index "
            "version is never served"
        )
    return text


def write_output(path: str | Path, text: str) -> Path:
    """Write a result file (its folder made as needed) and say so on stderr: `wrote PATH`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return out


def write_json(path: str | Path, payload: Any, **dumps: Any) -> Path:
    """`write_output` of `payload` as indented JSON (non-ASCII kept) with a final newline."""
    return write_output(path, json.dumps(payload, ensure_ascii=False, indent=2, **dumps) + "\n")
