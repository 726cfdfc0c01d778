"""`rag chat`: a multi-turn REPL over the catalog.

    rag chat --set retrieval.k=8

Follow-ups ("who wrote it?", "and is it for kids?") stay on the product under discussion: the
retriever reads the conversation history when a question names no product; with no product under
discussion (a new chat, or after /clear) the answer asks which product is meant. Commands start
with a slash; /help lists them. Ctrl-C cancels the current line, Ctrl-D (or /quit) leaves.

The prompt comes at once: the index, the embedding model and the generator load in a background
thread (the banner says what is loading), and the first question waits for them if it comes
sooner. Library progress bars and warnings are kept off the terminal. After an answer only the
rows it cites are listed; /sources lists every retrieved row.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rag.config import Config
from rag.quiet import quiet_libraries
from rag.types import Answer

HELP = """Commands:
  /help            show this help
  /sources         show every row retrieved for the last answer (after an answer: only the cited ones)
  /k N             retrieve N rows per question (now: {k})
  /clear           forget the conversation (start a new product)
  /quit, /exit     leave (Ctrl-D works too)
Anything else is a question, e.g. "what is Mog's Kittens about?", then "who wrote it?"."""

_CITATION = re.compile(r"\[(\d{1,3})\]")


def cited_numbers(answer: Answer) -> list[int]:
    """The source numbers [n] the answer's text cites, in source order."""
    cited = {int(n) for n in _CITATION.findall(answer.text)}
    return [i for i in range(1, len(answer.sources) + 1) if i in cited]


def format_sources(answer: Answer, *, every_row: bool = True) -> str:
    """The answer's sources; with every_row=False only the ones its text cites (and how many more)."""
    if not answer.sources:
        from rag.pipeline import WHICH_PRODUCT_ANSWER

        if answer.text == WHICH_PRODUCT_ANSWER:
            return "Sources: none (no product named yet)"
        return "Sources: none (nothing in the catalog matched)"
    shown = list(range(1, len(answer.sources) + 1)) if every_row else cited_numbers(answer)
    lines = ["Sources:" if shown else "Sources: none cited"]
    for i in shown:
        source = answer.sources[i - 1]
        lines.append(f"  [{i}] {source.title}  (uid {source.uid}, score {source.score:.3f})")
    hidden = len(answer.sources) - len(shown)
    if hidden:
        lines.append(
            f"  (+{hidden} more retrieved row{'s' if hidden > 1 else ''}, not cited: /sources lists them)"
        )
    if answer.unsupported_sentences:
        lines.append(f"  ! {len(answer.unsupported_sentences)} sentence(s) not supported by these sources")
    return "\n".join(lines)


def _history_file() -> Path:
    return Path(os.environ.get("RAG_HISTORY_FILE", Path.home() / ".rag_history"))


def _no_history() -> None:
    """Nothing to save: no readline, or not a terminal."""


def _enable_readline() -> Callable[[], None]:
    """Load the readline history; returns the function that saves it (called on the way out)."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline
        return _no_history
    history = _history_file()
    with contextlib.suppress(OSError):  # FileNotFoundError included: no history yet
        readline.read_history_file(history)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(history)

    return save


class PipelineLoader:
    """Builds the RAG pipeline in a daemon thread; `get()` waits for it (re-raising a load error)."""

    def __init__(self, config: Config, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.rag: Any = None
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self._on_error = on_error
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._load, name="rag-chat-load", daemon=True)

    def start(self) -> PipelineLoader:
        self._thread.start()
        return self

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            from rag.pipeline import RAG

            rag = RAG.from_config(self.config)
            _ = rag.retriever.snapshot  # open (and verify) the index now, not at the first question
            warm_up = getattr(rag.generator, "warm_up", None)
            if callable(warm_up):
                warm_up()
            self.rag = rag
        except BaseException as exc:  # noqa: BLE001 - handed to the REPL thread
            self.error = exc
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self.seconds = time.perf_counter() - started
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def get(self) -> Any:
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.rag


def describe_loading(config: Config) -> str:
    parts = [f"the index at {config.index.path}", f"the embedding model {config.embedding.model}"]
    if config.generator.backend != "extractive":
        parts.append(f"the {config.generator.backend} generator {config.generator.model or ''}".rstrip())
    return ", ".join(parts[:-1]) + " and " + parts[-1]


class ChatSession:
    """Conversation state for the REPL (and for apps that want the same behaviour)."""

    def __init__(self, rag: Any, k: int | None = None) -> None:
        self.rag = rag
        self.k = k or rag.config.retrieval.k
        self.history: list[dict[str, str]] = []
        self.last: Answer | None = None

    def ask_stream(self, question: str) -> Any:
        return self.rag.answer(question, k=self.k, history=self.history, stream=True)

    def record(self, question: str, answer: Answer) -> None:
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]
        self.last = answer

    def clear(self) -> None:
        self.history.clear()
        self.last = None


class ChatLoadError(RuntimeError):
    """The pipeline could not be loaded for a reason the user can fix (`rag chat` prints it in one line)."""


def _load_failure(exc: BaseException) -> BaseException:
    """A load error the user can fix (a message of this project, a missing file) as ChatLoadError; bugs as they are."""
    own = type(exc).__module__.split(".")[0] in ("rag", "index", "finetune", "api")
    if own or isinstance(exc, (ValueError, OSError)):
        return ChatLoadError(f"could not load the pipeline: {exc}")
    return exc


def _check_index(config: Config) -> None:
    """The one check that cannot wait for the background load: is there an index at all?"""
    from index.store import IndexStore

    if not IndexStore.from_config(config).has_current():
        raise FileNotFoundError(
            f"no index at {config.index.path!r} (index.path): build one with "
            f"`rag index build --data PATH` or run `rag demo` for the bundled synthetic catalog"
        )


def run_repl(
    config: Config,
    k: int | None = None,
    input_fn: Callable[[str], str] = input,
    output: TextIO | None = None,
    rag: Any = None,
) -> int:
    """Run the chat loop until /quit or end of input. Returns the exit status.

    Without `rag` the pipeline is built from `config` in the background while the prompt is shown."""
    out = output or sys.stdout
    loader: PipelineLoader | None = None
    if rag is None:
        quiet_libraries()
        _check_index(config)
        main_thread = threading.main_thread()

        def interrupt(exc: BaseException) -> None:  # wake the prompt so the error is reported at once
            if input_fn is input and main_thread.ident is not None and hasattr(signal, "pthread_kill"):
                # a real SIGINT to the main thread: its blocking read returns, input() raises KeyboardInterrupt
                signal.pthread_kill(main_thread.ident, signal.SIGINT)

        loader = PipelineLoader(config, on_error=interrupt).start()
    save_history: Callable[[], None] = _no_history
    if input_fn is input and sys.stdin.isatty():
        save_history = _enable_readline()
    generator = rag.generator.name if rag is not None else config.generator.backend
    print(f"Catalog chat ({generator} answers). /help for commands, Ctrl-D to leave.", file=out)
    if loader is not None:
        print(f"Loading {describe_loading(config)} in the background; ask away.", file=out, flush=True)
    session = ChatSession(rag, k) if rag is not None else None
    k_setting = k or config.retrieval.k
    try:
        while True:
            try:
                line = input_fn("you> ")
            except EOFError:
                print(file=out)
                return 0
            except KeyboardInterrupt:
                if loader is not None and loader.error is not None:
                    raise _load_failure(loader.error) from loader.error
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
                    print(HELP.format(k=session.k if session else k_setting), file=out)
                elif command == "/sources":
                    last = session.last if session else None
                    print(format_sources(last) if last else "No answer yet.", file=out)
                elif command == "/k":
                    try:
                        value = int(arg)
                        if value <= 0 or value > 100:
                            raise ValueError
                    except ValueError:
                        print(f"/k takes a whole number from 1 to 100, got {arg!r}", file=out)
                        continue
                    k_setting = value
                    if session:
                        session.k = value
                    print(f"k = {value}", file=out)
                elif command == "/clear":
                    if session:
                        session.clear()
                    print("Conversation cleared.", file=out)
                else:
                    print(f"Unknown command {command}; /help lists the commands.", file=out)
                continue
            if session is None:
                assert loader is not None
                if not loader.done:
                    print("(still loading; the answer follows as soon as it is ready)", file=out, flush=True)
                if loader.error is not None:
                    raise _load_failure(loader.error) from loader.error
                session = ChatSession(loader.get(), k_setting)
            try:
                stream = session.ask_stream(line)
                print("bot> ", end="", file=out, flush=True)
                for piece in stream:
                    print(piece, end="", file=out, flush=True)
                print(file=out)
                answer = stream.answer
            except KeyboardInterrupt:
                print("\n(answer interrupted)", file=out)
                continue
            except ValueError as exc:
                print(f"error: {exc}", file=out)
                continue
            session.record(line, answer)
            print(format_sources(answer, every_row=False), file=out)
    finally:
        save_history()
