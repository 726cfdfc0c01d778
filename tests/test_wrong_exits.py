"""Issue 12, points 8 and 10: user-fixable errors exit 2 with one line, never 1 with a traceback.

    .venv/bin/python -m pytest tests/test_wrong_exits.py -q

In-process `rag.cli.main` stands for the command (an exception escaping it is the traceback and
exit status 1 of the real command); the cases that depend on the process itself (argv bytes that
are not UTF-8, a closed stdout) run `python -m rag.cli` in a subprocess.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from index.build import build_index
from index.store import MANIFEST_FILE, IndexStore
from index.testing import hashing_config, write_catalog
from rag.cli import main

REPO = Path(__file__).resolve().parent.parent


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


def _index(tmp_path: Path, rows: int = 30) -> tuple[Path, IndexStore]:
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "base.jsonl", rows)], progress=False)
    return tmp_path / "index", IndexStore.from_config(config)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and the single error line (asserted to be one line starting with `error: `)."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code, lines[0]


def _unchanged(store: IndexStore, version: str) -> None:
    assert store.current_version() == version and store.verify().ok
    assert store.complete_versions() == [version] and not list(store.versions_dir.glob(".*"))


# --------------------------------------------------------------------------- catalog files that cannot be read


@pytest.mark.parametrize("case", ["truncated", "trailing garbage", "directory"])
@pytest.mark.parametrize("command", ["build", "update"])
def test_unreadable_data_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    index_path, store = _index(tmp_path)
    version = store.current_version()
    blob = gzip.compress(write_catalog(tmp_path / "new.jsonl", 500, start=100).read_bytes())
    data = tmp_path / "new.jsonl.gz"
    if case == "truncated":
        data.write_bytes(blob[: len(blob) // 2])
    elif case == "trailing garbage":
        data.write_bytes(blob + b"\x00garbage after the gzip stream")
    else:
        data = tmp_path / "a-directory"
        data.mkdir()
    code, line = _run(capsys, "index", command, "--data", str(data), "-q", *_sets(index_path))
    assert code == 2 and str(data) in line
    expected = {
        "truncated": "the file is truncated",
        "trailing garbage": "bytes that are not gzip follow the end",
        "directory": "is a directory",
    }[case]
    assert expected in line and "complete?" not in line
    _unchanged(store, version)


def test_delete_list_that_is_a_directory_or_not_utf8_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index_path, store = _index(tmp_path)
    version = store.current_version()
    code, line = _run(capsys, "index", "update", "--delete", str(tmp_path), *_sets(index_path))
    assert code == 2 and f"{tmp_path}: is a directory" in line
    bad = tmp_path / "gone.txt"
    bad.write_bytes(b"P0000001\nP00\xff\xfe02\n")
    code, line = _run(capsys, "index", "update", "--delete", str(bad), *_sets(index_path))
    assert code == 2 and f"{bad}: line 2 is not valid UTF-8" in line
    _unchanged(store, version)


# --------------------------------------------------------------------------- the disk is full


def test_disk_full_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC for real: the rejects file, then the FAISS file, are written to /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    index_path, store = _index(tmp_path)
    version = store.current_version()
    data = write_catalog(tmp_path / "more.jsonl", 40, start=100)
    with open(data, "ab") as out:
        out.write(b"{not json\n" * 3)
    code, line = _run(
        capsys,
        "index",
        "build",
        "--data",
        str(data),
        "-q",
        *_sets(index_path),
        "--set",
        "catalog.rejects_path=/dev/full",
    )
    assert code == 2 and "no space left on the device" in line and "nothing was written" in line
    _unchanged(store, version)

    from index.vector import FaissIndex

    save = FaissIndex.save
    monkeypatch.setattr(FaissIndex, "save", lambda self, path: save(self, "/dev/full"))
    for command in ("build", "update"):
        code, line = _run(
            capsys,
            "index",
            command,
            "--data",
            str(data),
            "-q",
            *_sets(index_path),
            "--set",
            "index.compact_ratio=0.0001",
            "--set",
            "index.compact_min_rows=0",
        )
        assert code == 2 and "no space left on the device" in line, line
        _unchanged(store, version)


# --------------------------------------------------------------------------- index.path


def test_index_path_pointing_at_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    data = write_catalog(tmp_path / "c.jsonl", 5)
    for argv in (
        ["index", "build", "--data", str(data), "-q"],
        ["index", "info"],
        ["index", "versions"],
        ["ask", "who wrote it?"],
    ):
        for root in (a_file, a_file / "below"):
            code, line = _run(capsys, *argv, *_sets(root))
            assert code == 2 and f"index.path='{root}'" in line and "a file, not a directory" in line, line


# --------------------------------------------------------------------------- rag ask


def test_ask_rejects_bad_questions_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rag.pipeline

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pipeline was loaded for a question that is refused anyway")

    monkeypatch.setattr(rag.pipeline.RAG, "from_config", never)
    cases = {
        "": "the question is empty",
        "   ": "the question is empty",
        "x" * (rag.pipeline.MAX_QUESTION_CHARS + 1): "the limit is 4,000",
        "caf\udce9 au lait": "not valid UTF-8 (character 4)",
    }  # how Python hands over argv byte 0xe9
    for question, expected in cases.items():
        code, line = _run(capsys, "ask", question, *_sets(tmp_path / "index"))
        assert code == 2 and expected in line, line


def test_ask_on_a_damaged_index_says_what_is_damaged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "no index at ... build one" when the index exists but `current` or its manifest is broken."""
    index_path, store = _index(tmp_path)
    version = store.current_version()
    (store.version_dir(version) / MANIFEST_FILE).rename(tmp_path / "manifest.json")
    code, line = _run(capsys, "ask", "who wrote it?", *_sets(index_path))
    assert code == 2 and f"{version}/manifest.json: missing" in line and "no index at" not in line
    (tmp_path / "manifest.json").rename(store.version_dir(version) / MANIFEST_FILE)
    store.current_file.write_text("v20990101T000000000000Z\n")
    code, line = _run(capsys, "ask", "who wrote it?", *_sets(index_path))
    assert code == 2 and "v20990101T000000000000Z: version directory not found" in line
    store.current_file.unlink()
    code, line = _run(capsys, "ask", "who wrote it?", *_sets(index_path))
    assert (
        code == 2
        and "no version is served although 1 exist" in line
        and f"rag index rollback {version}" in line
    )


def _python(*argv: str | bytes, **kwargs: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "rag.cli", *argv], env=env, cwd=str(REPO), **kwargs)  # type: ignore[call-overload]


def test_ask_argv_not_utf8_and_closed_stdout(tmp_path: Path) -> None:
    """Real processes: argv bytes that are not UTF-8 exit 2; `rag ask ... | head` ends quietly (141)."""
    index_path, _store = _index(tmp_path)
    sets = [s.encode() for s in _sets(index_path)]
    proc = _python(b"ask", b"caf\xe9?", *sets, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.decode().startswith("error: the question is not valid UTF-8"), err

    # the reader of stdout is gone before the answer is printed (what `| head -1` does after one line)
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(tmp_path / "stderr.txt", "wb") as err_file:
        proc = _python(
            "ask",
            "What is The River Garden Cookbook 3 about?",
            *_sets(index_path),
            stdout=write_end,
            stderr=err_file,
        )
        os.close(write_end)
        assert proc.wait(timeout=120) == 141
    err_text = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err_text and "BrokenPipeError" not in err_text, err_text


# --------------------------------------------------------------------------- rag index build and the lock


def test_build_checks_the_writer_lock_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import index.embedder

    index_path, store = _index(tmp_path)
    loads: list[float] = []
    real = index.embedder.load_embedder

    def counting(*args: object, **kwargs: object) -> object:
        loads.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(index.embedder, "load_embedder", counting)
    data = write_catalog(tmp_path / "c.jsonl", 5)
    with store.lock():  # another writer holds the lock
        code, line = _run(capsys, "index", "build", "--data", str(data), "-q", *_sets(index_path))
    assert code == 2 and "another index writer holds the lock" in line
    assert loads == []  # failed before the model was loaded


def test_a_build_whose_model_cannot_load_exits_2_and_keeps_the_index(tmp_path, capsys):
    """The model loads on a thread beside the reading (index/build.py: _ModelLoad): its error still
    ends the build with one line naming the model, and the current version stays as it was."""
    index_path, store = _index(tmp_path)
    version = store.current_version()
    data = write_catalog(tmp_path / "new.jsonl", 2000)
    sets = ["--set", f"index.path={index_path}", "--set", "index.descriptions=false"]
    missing = tmp_path / "no-such-model"
    t0 = time.perf_counter()
    code, line = _run(
        capsys, "index", "build", "--quiet", "--data", str(data), *sets, "--set", f"embedding.model={missing}"
    )
    assert code == 2 and "no-such-model" in line, line
    assert time.perf_counter() - t0 < 60
    assert version is not None
    _unchanged(store, version)
