"""Issue 12: the hostile-input corpus (tests/hostile_corpus.py) through `rag index build`,
`rag index update` and the admin upload.

    .venv/bin/python -m pytest tests/test_hostile_inputs.py -q

After each case: every record is counted (read = accepted + rejected + duplicates + trailing, and
the counts are the corpus's), the exit status is 0 or 2 as the corpus says (never 1: an exception
escaping `rag.cli.main` is the real command's traceback and exit 1), an error is one line, and the
version served before still opens, verifies and answers (after a failure it is still `current`).
A last test measures the reader's memory on the 50 MB line in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index.build import build_index
from index.store import IndexStore
from index.testing import hashing_config, write_catalog
from rag.cli import main
from tests.hostile_corpus import CASES, Case

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(
    r"read ([\d,]+) = accepted ([\d,]+) \+ rejected ([\d,]+) \+ duplicates ([\d,]+)"
    r"(?: \+ trailing data ([\d,]+))?"
)
BASE_ROWS = 40


def _n(text: str | None) -> int:
    return int(text.replace(",", "")) if text else 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("hostile")
    return {case.name: case.write(directory) for case in CASES}


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-base")
    build_index(
        hashing_config(root / "index"), [write_catalog(root / "base.jsonl", BASE_ROWS)], progress=False
    )
    return root / "index"


def _sets(index_path: Path) -> list[str]:
    return [
        "--set",
        f"index.path={index_path}",
        "--set",
        "embedding.model=hashing:64",
        "--set",
        "index.descriptions=false",
        "--set",
        "index.keep_versions=0",
    ]


def _serves(store: IndexStore, version: str, rows: int) -> None:
    """`version` opens (sha256 included), verifies, and answers a search and a lookup."""
    assert store.verify(version).ok
    snapshot = store.open_version(version)
    try:
        assert snapshot.rows == rows
        _scores, ids = snapshot.search(np.ones((1, 64), dtype=np.float32) / 8, 3)
        assert (ids >= 0).all() and snapshot.get_by_uid("P0000001") is not None
    finally:
        snapshot.close()


def _check_counts(case: Case, text: str) -> None:
    found = SUMMARY.search(text)
    if case.read is None:  # the file cannot be read as a whole: no counts, the error says why
        assert found is None, text
        return
    assert found is not None, text
    read, accepted, rejected, duplicates, trailing = (_n(g) for g in found.groups())
    assert read == accepted + rejected + duplicates + trailing, text  # nothing uncounted
    assert (read, accepted) == (case.read, case.accepted), text


@pytest.mark.parametrize("command", ["build", "update"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli(
    case: Case,
    command: str,
    corpus: dict[str, Path],
    base_index: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    index_path = tmp_path / "index"
    shutil.copytree(base_index, index_path)
    store = IndexStore(index_path)
    before = store.current_version()
    capsys.readouterr()
    code = main(["index", command, "--data", str(corpus[case.name]), "-q", *_sets(index_path)])
    out, err = capsys.readouterr()
    expected = case.build if command == "build" else case.update
    assert code == expected, out + err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing was written" in lines[0], err
        _check_counts(case, lines[0])
        assert store.current_version() == before and store.complete_versions() == [before]
        _serves(store, before, BASE_ROWS)
    else:
        _check_counts(case, out)
        current = store.current_version()
        if case.accepted:
            assert current != before
            manifest = store.manifest(current)
            summary = manifest["read_summary"]
            assert summary["read"] == (
                summary["accepted"] + summary["rejected"] + summary["duplicates"] + summary["trailing"]
            )
            rows = case.accepted + (BASE_ROWS if command == "update" else 0)
            assert manifest["rows"] == rows
            if command == "update":
                _serves(store, current, rows)
            _serves(store, before, BASE_ROWS)  # the previous version is still there and whole
        else:  # nothing to change
            assert out.startswith(f"nothing to change: index {before} stays current") and current == before
            _serves(store, before, BASE_ROWS)
    assert not list(store.versions_dir.glob(".*")) and not list((index_path / "uploads").glob("*"))


@pytest.fixture(scope="module")
def upload_server(base_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from api.app import create_app
    from api.testing import LiveServer

    index_path = tmp_path_factory.mktemp("hostile-upload") / "index"
    shutil.copytree(base_index, index_path)
    config = hashing_config(
        index_path, extra=["api.admin_key_env=RAG_HOSTILE_ADMIN", "api.api_key_env=RAG_HOSTILE_KEY"]
    )
    os.environ["RAG_HOSTILE_ADMIN"] = "hostile-admin"
    try:
        app = create_app(config)
    finally:
        del os.environ["RAG_HOSTILE_ADMIN"]
    live = LiveServer(app).start()
    live.wait_ready()
    yield live
    live.stop()


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.upload is not None], ids=[c.name for c in CASES if c.upload]
)
def test_admin_upload(case: Case, corpus: dict[str, Path], upload_server: Any) -> None:
    url = upload_server.url
    before = httpx.get(url + "/readyz").json()
    response = httpx.post(
        url + "/v1/index/update",
        content=corpus[case.name].read_bytes(),
        timeout=120,
        headers={"X-API-Key": "hostile-admin", "content-type": "application/x-ndjson"},
    )
    assert response.status_code == case.upload, response.text
    data = response.json()
    if response.status_code == 200:
        read = data["report"]["read"]
        assert read["read"] == read["accepted"] + read["rejected"] + read["duplicates"] + read["trailing"]
        assert (read["read"], read["accepted"]) == (case.read, case.accepted)
        assert data["previous_version"] == before["index_version"] and data["changed"]
    else:
        message = data["error"]["message"]
        if case.read:  # refused for its rejects: the counts are in the message
            _check_counts(case, message)
        assert "nothing was written" in message or "nothing to do" in message, message
    after = httpx.get(url + "/readyz").json()
    assert after["status"] == "ready"
    if response.status_code != 200:
        assert after["index_version"] == before["index_version"]
    answer = httpx.post(url + "/v1/answer", json={"question": "What is The River Garden Cookbook 3 about?"})
    assert answer.status_code == 200 and answer.json()["sources"]
    assert httpx.get(url + "/v1/products/P0000001").status_code == 200


def test_reader_memory_on_a_50mb_line(corpus: dict[str, Path], tmp_path: Path) -> None:
    """One 52 MB JSON line cost 979 MB in the reader; with catalog.max_line_bytes it costs a few MB."""
    script = (
        "import json, resource, sys\n"
        "from rag.catalog import read_catalog\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rows, summary = read_catalog([sys.argv[1]])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'grew_mb': (after - before) / 1024, 'rejected': summary.rejected}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(corpus["line_50mb"])],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["rejected"] == 1 and figures["grew_mb"] < 40, figures
