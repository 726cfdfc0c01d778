"""Issue 12, point 6: a served file damaged in place never kills `rag serve` silently.

    .venv/bin/python -m pytest tests/test_served_damage.py -q

A real `rag serve` process (python -m rag.cli serve) on a loopback port over a small index
(hashing embedder, description index on). `vectors.faiss` of the served version is truncated in
place, which killed the server with SIGBUS (exit -7, nothing logged) when the file was
memory-mapped:

- mapped (`index.mmap_min_bytes=0`): clients get 503 naming the damage, the process lives and logs
  it, and it serves again once `current` names a good version (a rebuild); the same for a
  truncated description-index array; killed and restarted on the damaged index, it starts, says
  why on /readyz and answers 503;
- read into memory (the default for files under `index.mmap_min_bytes`): clients keep getting the
  version that was loaded, and /readyz reports the damage on disk.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from index.build import build_index
from index.store import IndexStore
from index.testing import hashing_config, write_catalog

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
QUESTION = {"question": "What is The River Garden Cookbook 3 about?"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`rag serve` in a subprocess; its stdout and stderr go to `log`."""

    def __init__(self, index_path: Path, log: Path, *overrides: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        sets = [f"index.path={index_path}", "embedding.model=hashing:64", *overrides]
        argv = [sys.executable, "-m", "rag.cli", "serve", "--port", str(self.port)]
        for item in sets:
            argv += ["--set", item]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("RAG_API_KEY", None)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)

    def wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"rag serve exited {self.proc.returncode}:\n{self.log_text()}"
            try:
                ready = httpx.get(self.url + "/readyz", timeout=2)
                if ready.status_code == 200 or ready.json().get("reason") != "loading the index and models":
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"rag serve did not come up:\n{self.log_text()}")

    def alive(self) -> None:
        assert self.proc.poll() is None, f"rag serve died with {self.proc.returncode}:\n{self.log_text()}"
        assert httpx.get(self.url + "/healthz", timeout=5).status_code == 200

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def _build(index_path: Path, catalog: Path) -> Any:
    return build_index(
        hashing_config(index_path, extra=["index.descriptions=true"]), [catalog], progress=False
    )


def _requests(url: str) -> list[httpx.Response]:
    chat = {"messages": [{"role": "user", "content": QUESTION["question"]}]}
    with httpx.Client(base_url=url, timeout=30) as client:
        return [
            client.post("/v1/answer", json=QUESTION),
            client.post("/v1/chat/completions", json=chat),
            client.post("/v1/chat/completions", json={**chat, "stream": True}),
            client.get("/v1/products/P0000003"),
        ]


def _truncate(path: Path) -> None:
    os.truncate(
        path, path.stat().st_size // 2
    )  # in place: the same inode, as `truncate` or a `cp` over it does


def test_truncated_mapped_file_gives_errors_not_a_dead_server(tmp_path: Path, servers: list[Server]) -> None:
    index_path = tmp_path / "index"
    catalog = write_catalog(tmp_path / "catalog.jsonl", 3000)
    report = _build(index_path, catalog)
    server = Server(index_path, tmp_path / "serve.log", "index.mmap_min_bytes=0", "index.descriptions=true")
    servers.append(server)
    server.wait_up()
    assert all(r.status_code == 200 for r in _requests(server.url))

    _truncate(Path(report.path) / "vectors.faiss")
    for _ in range(3):
        for response in _requests(server.url):
            assert response.status_code == 503, response.text
            message = response.json()["error"]["message"]
            assert "was truncated while it was served" in message and str(tmp_path) not in message
    server.alive()
    ready = httpx.get(server.url + "/readyz").json()
    assert (
        ready["status"] == "not_ready"
        and "truncated" in ready["reason"]
        and str(tmp_path) not in ready["reason"]
    )
    assert "the served index version" in server.log_text() and "is damaged" in server.log_text()

    # a rebuild makes `current` name a good version: the server picks it up and answers again
    fresh = _build(index_path, catalog)
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/readyz").json().get("index_version") != fresh.version:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)
    assert all(r.status_code == 200 for r in _requests(server.url))

    # the description index's arrays are watched the same way
    _truncate(Path(fresh.path) / "lexical.base.docs.npy")
    assert [r.status_code for r in _requests(server.url)] == [503] * 4
    server.alive()

    # killed while the file is damaged, and started again on it: it comes up, says why, answers 503
    server.kill()
    assert server.proc.returncode == -signal.SIGKILL
    restarted = Server(index_path, tmp_path / "serve2.log", "index.mmap_min_bytes=0")
    servers.append(restarted)
    restarted.wait_up()
    ready = httpx.get(restarted.url + "/readyz")
    assert ready.status_code == 503 and "lexical.base.docs.npy" in ready.json()["reason"]
    assert [r.status_code for r in _requests(restarted.url)] == [503] * 4
    restarted.alive()
    assert "lexical.base.docs.npy" in restarted.log_text()


def test_truncated_file_read_into_memory_keeps_serving(tmp_path: Path, servers: list[Server]) -> None:
    index_path = tmp_path / "index"
    report = _build(index_path, write_catalog(tmp_path / "catalog.jsonl", 3000))
    server = Server(
        index_path, tmp_path / "serve.log", "index.descriptions=true"
    )  # default mmap_min_bytes: 64 MiB
    servers.append(server)
    server.wait_up()
    before = _requests(server.url)[0].json()

    for name in ("vectors.faiss", "lexical.base.docs.npy"):
        _truncate(Path(report.path) / name)
    time.sleep(1.5)  # LiveIndex looks at the files with `current`, every second
    after = _requests(server.url)
    assert [r.status_code for r in after] == [200] * 4
    assert after[0].json()["sources"] == before["sources"]  # the same version, from memory
    server.alive()
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["index_version"] == report.version
    assert "changed on disk" in ready["reason"] and "vectors.faiss" in ready["reason"]
    assert str(tmp_path) not in ready["reason"]
    assert not IndexStore(index_path).verify().ok  # and `rag index verify` says so too


@pytest.mark.parametrize(
    ("overrides", "mapped"),
    [
        ([], []),  # the default: files under 64 MiB are read into memory
        (["index.mmap_min_bytes=0"], ["vectors.faiss", "lexical.base.docs.npy"]),
        (["index.mmap_min_bytes=0", "index.mmap=false"], []),  # index.mmap was documented but never read
    ],
)
def test_index_mmap_settings_are_honoured(tmp_path: Path, overrides: list[str], mapped: list[str]) -> None:
    from rag.retrieval import Retriever

    config = hashing_config(tmp_path / "index", extra=["index.descriptions=true", *overrides])
    build_index(config, [write_catalog(tmp_path / "catalog.jsonl", 200)], progress=False)
    retriever = Retriever.from_config(config)
    assert retriever.live_index.mmap is config.index.mmap
    retriever.search("The River Garden Cookbook 3")  # opens the description index too
    names = [path.name for path in retriever.snapshot.mapped.paths]
    assert all(name in names for name in mapped) and (bool(names) == bool(mapped)), names
