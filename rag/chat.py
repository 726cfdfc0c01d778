"""`rag chat`: a multi-turn REPL over the catalog.

    rag chat --set retrieval.k=8

Follow-ups ("who wrote it?", "and is it for kids?") stay on the product under discussion: the
retriever reads the conversation history when a question names no product. Commands start with
a slash; /help lists them. Ctrl-C cancels the current line, Ctrl-D (or /quit) leaves.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from rag.config import Config
from rag.types import Answer

HELP = """Commands:
  /help            show this help
  /sources         show the sources of the last answer again
  /k N             retrieve N rows per question (now: {k})
  /clear           forget the conversation (start a new product)
  /quit, /exit     leave (Ctrl-D works too)
Anything else is a question, e.g. "what is Mog's Kittens about?", then "who wrote it?"."""


def format_sources(answer: Answer) -> str:
    if not answer.sources:
        return "Sources: none (nothing in the catalog matched)"
    lines = ["Sources:"]
    for i, source in enumerate(answer.sources, 1):
        lines.append(f"  [{i}] {source.title}  (uid {source.uid}, score {source.score:.3f})")
    if answer.unsupported_sentences:
        lines.append(f"  ! {len(answer.unsupported_sentences)} sentence(s) not supported by these sources")
    return "\n".join(lines)


def _enable_readline() -> None:
    try:
        import atexit
        import readline
    except ImportError:  # Windows without pyreadline
        return
    history = Path(os.environ.get("RAG_HISTORY_FILE", Path.home() / ".rag_history"))
    try:
        readline.read_history_file(history)
    except (FileNotFoundError, OSError):
        pass
    readline.set_history_length(1000)
    atexit.register(lambda: _save_history(readline, history))


def _save_history(readline: Any, history: Path) -> None:
    try:
        readline.write_history_file(history)
    except OSError:
        pass


class ChatSession:
    """Conversation state for the REPL (and for apps that want the same behaviour)."""

    def __init__(self, rag: Any, k: int | None = None) -> None:
        self.rag = rag
        self.k = k or rag.config.retrieval.k
        self.history: list[dict[str, str]] = []
        self.last: Answer | None = None

    def ask_stream(self, question: str) -> Any:
        stream = self.rag.answer(question, k=self.k, history=self.history, stream=True)
        return stream

    def record(self, question: str, answer: Answer) -> None:
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]
        self.last = answer

    def clear(self) -> None:
        self.history.clear()
        self.last = None


def run_repl(
    config: Config,
    k: int | None = None,
    input_fn: Callable[[str], str] = input,
    output: TextIO | None = None,
    rag: Any = None,
) -> int:
    """Run the chat loop until /quit or end of input. Returns the exit status."""
    out = output or sys.stdout
    if rag is None:
        from rag.pipeline import RAG

        rag = RAG.from_config(config)
    session = ChatSession(rag, k)
    if input_fn is input and sys.stdin.isatty():
        _enable_readline()
    print(f"Catalog chat ({rag.generator.name} answers). /help for commands, Ctrl-D to leave.", file=out)
    while True:
        try:
            line = input_fn("you> ")
        except EOFError:
            print("", file=out)
            return 0
        except KeyboardInterrupt:
            print("^C (Ctrl-D or /quit leaves)", file=out)
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            command = command.lower()
            if command in ("/quit", "/exit", "/q"):
                return 0
            if command in ("/help", "/h", "/?"):
                print(HELP.format(k=session.k), file=out)
            elif command == "/sources":
                print(format_sources(session.last) if session.last else "No answer yet.", file=out)
            elif command == "/k":
                try:
                    value = int(arg)
                    if value <= 0 or value > 100:
                        raise ValueError
                except ValueError:
                    print(f"/k takes a whole number from 1 to 100, got {arg!r}", file=out)
                    continue
                session.k = value
                print(f"k = {value}", file=out)
            elif command == "/clear":
                session.clear()
                print("Conversation cleared.", file=out)
            else:
                print(f"Unknown command {command}; /help lists the commands.", file=out)
            continue
        try:
            stream = session.ask_stream(line)
            print("bot> ", end="", file=out, flush=True)
            for piece in stream:
                print(piece, end="", file=out, flush=True)
            print("", file=out)
            answer = stream.answer
        except KeyboardInterrupt:
            print("\n(answer interrupted)", file=out)
            continue
        except ValueError as exc:
            print(f"error: {exc}", file=out)
            continue
        session.record(line, answer)
        print(format_sources(answer), file=out)
