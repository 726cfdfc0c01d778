"""`rag chat` in a real terminal: a pseudo-terminal (80x24, as tmux gives) drives the command line.

    .venv/bin/python -m pytest tests/test_chat_terminal.py -q -s     # -s prints the measured times

The index is a 300-row synthetic catalog with the default (bundled MiniLM) embedder and the
default extractive answerer: what `rag chat` uses after `make demo`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "you> "
# what tqdm-style bars of third-party libraries print ("Loading weights: 100%|####| 103/103 [00:00, ...it/s]")
PROGRESS_BAR = re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it|s)/(s|it)\]|Loading weights|Batches:")


@pytest.fixture(scope="module")
def index_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from index.build import build_index
    from rag.config import load_config
    from rag.synthetic import write_synthetic_catalog

    tmp = tmp_path_factory.mktemp("chat-terminal")
    catalog = write_synthetic_catalog(tmp / "catalog.jsonl", rows=300, seed=0)
    build_index(load_config(None, [f"index.path={tmp / 'index'}"]), [catalog], progress=False)
    return tmp / "index"


class Terminal:
    """A child process on a pseudo-terminal: write keys, read the screen's bytes until a marker."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True
        )
        os.close(slave)
        self.fd = master
        self.screen = ""
        self.mark = 0

    def read_until(self, marker: str, timeout: float) -> str:
        """Everything printed since the last call, up to and including the next `marker`."""
        deadline = time.monotonic() + timeout
        while marker not in self.screen[self.mark :]:
            left = deadline - time.monotonic()
            if left <= 0 or (self.process.poll() is not None and not select.select([self.fd], [], [], 0)[0]):
                raise AssertionError(f"{marker!r} not printed within {timeout} s; the screen:\n{self.screen}")
            if select.select([self.fd], [], [], min(left, 0.05))[0]:
                with contextlib.suppress(OSError):  # OSError: the child closed the terminal
                    self.screen += os.read(self.fd, 65536).decode("utf-8", "replace").replace("\r\n", "\n")
        end = self.screen.index(marker, self.mark) + len(marker)
        chunk, self.mark = self.screen[self.mark : end], end
        return chunk

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def ask(self, line: str, timeout: float = 60) -> str:
        self.type(line + "\n")
        return self.read_until(PROMPT, timeout)

    def drain(self) -> None:
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen += data.decode("utf-8", "replace").replace("\r\n", "\n")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self.fd)


@pytest.fixture
def terminal(index_path: Path, tmp_path: Path) -> Iterator[Terminal]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "TRANSFORMERS_VERBOSITY"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        RAG_HISTORY_FILE=str(tmp_path / "history"),
        TERM="xterm-256color",
        COLUMNS="80",
        LINES="24",
    )
    term = Terminal([sys.executable, "-m", "rag.cli", "chat", "--set", f"index.path={index_path}"], env)
    yield term
    term.close()


def test_rag_chat_in_a_terminal(terminal: Terminal) -> None:
    banner = terminal.read_until(PROMPT, timeout=30)
    prompt_s = time.monotonic() - terminal.started
    assert "Loading the index at" in banner and "embedding model" in banner  # says what is loading
    assert prompt_s <= 3.0, f"the prompt took {prompt_s:.2f} s"

    # no product under discussion yet: the answer asks for one (this first question waits for the load)
    asked = time.monotonic()
    clueless = terminal.ask("what is it about?")
    first_answer_s = time.monotonic() - asked
    assert "Which product do you mean?" in clueless

    answer = terminal.ask("what is City of Djinns about?")
    assert "William Dalrymple" in answer
    assert "[1] City of Djinns: A Year in Delhi" in answer and "[2] " not in answer  # only the cited row
    assert "/sources lists them" in answer
    assert "[5] " in terminal.ask("/sources")  # every retrieved row on request

    assert "Dalrymple" in terminal.ask("who wrote it?")  # the follow-up stays on the product
    terminal.ask("/clear")
    after_clear = terminal.ask("what is it about?")
    assert "Which product do you mean?" in after_clear and "Dalrymple" not in after_clear

    terminal.type("\x04")  # Ctrl-D
    pressed = time.monotonic()
    code = terminal.process.wait(10)
    exit_s = time.monotonic() - pressed
    terminal.drain()
    assert code == 0
    assert exit_s < 0.5, f"Ctrl-D took {exit_s:.2f} s to exit"
    bars = [line for line in terminal.screen.splitlines() if PROGRESS_BAR.search(line)]
    assert not bars, f"third-party progress output on the terminal: {bars}"
    print(
        f"\nrag chat: prompt after {prompt_s:.2f} s, first answer (waiting for the load) {first_answer_s:.2f} s, "
        f"Ctrl-D exit {exit_s:.3f} s"
    )
