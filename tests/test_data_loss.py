"""Issue 12: the index never loses data by itself (docs/index.md, "Guarantees").

    .venv/bin/python -m pytest tests/test_data_loss.py -q

1. a damaged current version is never deleted; damaged older ones go to quarantine/;
3. updates that change nothing write nothing; too many rejected lines fail (catalog.max_reject_fraction);
4. the rejects of a run that wrote nothing are kept where its message says;
5. admin uploads live under <index>/uploads/ and are cleaned up.
(2, rows after a JSON array's `]`, is in tests/test_catalog.py.)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from index.build import BuildError, build_index, update_index
from index.store import MANIFEST_FILE, WRITING_MARKER, IndexStore
from index.testing import hashing_config, product_row, write_catalog, write_rows
from rag.cli import main
from rag.config import ConfigError, load_config


def _cli(index_path: Path, *args: str, keep: int = 0) -> int:
    return main(
        [
            "index",
            *args,
            "--set",
            f"index.path={index_path}",
            "--set",
            "embedding.model=hashing:64",
            "--set",
            "index.descriptions=false",
            "--set",
            f"index.keep_versions={keep}",
        ]
    )


def _two_versions(tmp_path: Path, keep: int = 0) -> tuple:
    config = hashing_config(tmp_path / "index", keep_versions=keep)
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 50)], progress=False)
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 5, start=50)], progress=False)
    store = IndexStore.from_config(config)
    return config, store


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- 1. damaged versions


def test_update_on_current_without_manifest_fails_and_deletes_nothing(tmp_path, capsys):
    """The issue's repro: delete versions/<current>/manifest.json, then `rag index update`."""
    _config, store = _two_versions(tmp_path)
    current = store.current_version()
    (store.version_dir(current) / MANIFEST_FILE).unlink()
    files_before = sorted(p.name for p in store.version_dir(current).iterdir())
    data = write_catalog(tmp_path / "c.jsonl", 3, start=90)
    capsys.readouterr()

    assert _cli(store.root, "update", "--data", str(data), "-q") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"the current version {current} is damaged" in line and "nothing was changed or deleted" in line
    assert "rag index rollback" in line  # the advice
    assert store.current_version() == current
    assert sorted(p.name for p in store.version_dir(current).iterdir()) == files_before  # untouched
    assert len(store.complete_versions()) == 1  # the older, complete version is still there
    # gc and compact do not delete it either
    assert _cli(store.root, "gc", "--keep", "1") == 0
    assert _cli(store.root, "compact", "--force") == 2
    assert store.version_dir(current).is_dir() and store.current_version() == current


def test_verify_advice_rollback_then_the_damaged_version_is_quarantined(tmp_path, capsys):
    config, store = _two_versions(tmp_path)
    older, current = store.complete_versions()
    (store.version_dir(current) / MANIFEST_FILE).unlink()
    assert _cli(store.root, "verify") == 1
    out = capsys.readouterr().out
    assert "rag index rollback" in out and "rag index build" in out and "quarantine" in out

    assert _cli(store.root, "rollback") == 0  # the advice works ...
    assert store.current_version() == older
    assert store.open_current().rows == 50
    update_index(
        config, [write_catalog(tmp_path / "c.jsonl", 2, start=70)], progress=False
    )  # ... and the next write
    assert not store.version_dir(current).exists()
    (moved,) = list(store.quarantine_dir.iterdir())  # moved aside, not deleted
    assert moved.name.startswith(current + "-") and (moved / "meta.sqlite").is_file()


def test_rebuild_advice_keeps_the_damaged_version(tmp_path, capsys):
    _config, store = _two_versions(tmp_path, keep=1)
    current = store.current_version()
    (store.version_dir(current) / MANIFEST_FILE).unlink()
    assert (
        _cli(store.root, "build", "--data", str(write_catalog(tmp_path / "r.jsonl", 20)), "-q", keep=1) == 0
    )
    assert store.current_version() != current and store.open_current().rows == 20
    quarantined = [p.name for p in store.quarantine_dir.iterdir()]
    assert len(quarantined) == 1 and quarantined[0].startswith(current + "-")


def test_cleanup_removes_only_what_writers_name_as_temporary(tmp_path):
    _config, store = _two_versions(tmp_path)
    older, current = store.complete_versions()
    (store.version_dir(older) / MANIFEST_FILE).unlink()  # damaged, not current
    with store.lock():
        unfinished = store.new_version_dir()  # as a writer killed before its commit leaves it
        (unfinished / "vectors.faiss").write_bytes(b"half")
        staging = store.versions_dir / ".new-v20000101T000000000000Z"
        staging.mkdir()
        stale_marker = store.version_dir(current) / WRITING_MARKER  # committed, killed before unlinking it
        stale_marker.write_text("1\n")
        removed = store.cleanup_leftovers()
    assert sorted(removed) == sorted([unfinished.name, staging.name])
    assert not unfinished.exists() and not staging.exists() and not stale_marker.exists()
    assert [p.name.startswith(older + "-") for p in store.quarantine_dir.iterdir()] == [True]
    assert store.complete_versions() == [current] and store.verify().ok


def test_new_version_dir_is_marked_until_commit(tmp_path):
    config = hashing_config(tmp_path / "index")
    report = build_index(config, [write_catalog(tmp_path / "a.jsonl", 10)], progress=False)
    store = IndexStore.from_config(config)
    assert not (store.version_dir(report.version) / WRITING_MARKER).exists()
    with store.lock():
        fresh = store.new_version_dir()
        assert (fresh / WRITING_MARKER).is_file() and not list(store.versions_dir.glob(".new-*"))


# --------------------------------------------------------------------------- 3. no-op updates, max_reject_fraction


def test_no_op_updates_do_not_evict_the_history(tmp_path, capsys):
    config = hashing_config(tmp_path / "index", keep_versions=3)
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 30)], progress=False)
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 3, start=30)], progress=False)
    update_index(config, [], ["P0000000"], progress=False)
    store = IndexStore.from_config(config)
    history = store.complete_versions()
    assert len(history) == 3
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    same = write_catalog(tmp_path / "same.jsonl", 3, start=30)  # rows already in the index, unchanged
    gone = tmp_path / "gone.txt"
    gone.write_text("not-a-uid\n")  # a uid that is not in the index
    capsys.readouterr()
    for args in (["--data", str(empty)], ["--data", str(same)], ["--delete", str(gone)]):
        assert _cli(store.root, "update", *args, "-q", keep=3) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"nothing to change: index {history[-1]} stays current"), out
    report = update_index(config, [same], progress=False)
    assert not report.changed and report.version == report.parent == history[-1] and report.rows == 32
    assert store.complete_versions() == history and store.current_version() == history[-1]
    assert not list(store.versions_dir.glob(".*")) and not list(store.rejects_dir.iterdir())


@pytest.mark.parametrize("kind", ["utf16", "bare_cr", "invalid"])
def test_update_of_only_rejected_lines_fails_and_writes_nothing(tmp_path, capsys, kind):
    _config, store = _two_versions(tmp_path, keep=3)
    history = store.complete_versions()
    rows = [json.dumps(product_row(i)) for i in range(200, 210)]
    data = tmp_path / f"{kind}.jsonl"
    if kind == "utf16":
        data.write_text("\n".join(rows) + "\n", encoding="utf-16")
    elif kind == "bare_cr":
        data.write_bytes(("\r".join(rows) + "\r").encode())
    else:
        data.write_text("{oops\n" * 10, encoding="utf-8")
    capsys.readouterr()
    assert _cli(store.root, "update", "--data", str(data), "-q", keep=3) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no usable rows" in line and "nothing was written" in line
    assert store.complete_versions() == history and store.current_version() == history[-1]
    # accepted on purpose: every line may be rejected -> nothing to change, still no version
    assert (
        main(
            [
                "index",
                "update",
                "--data",
                str(data),
                "-q",
                "--set",
                f"index.path={store.root}",
                "--set",
                "embedding.model=hashing:64",
                "--set",
                "index.descriptions=false",
                "--set",
                "catalog.max_reject_fraction=1",
            ]
        )
        == 0
    )
    assert "nothing to change" in capsys.readouterr().out
    assert store.complete_versions() == history


def test_build_with_too_many_rejects_keeps_the_served_index(tmp_path, capsys):
    """The issue: a build with 99.9% rejected lines replaced a 300-row index with a 1-row one."""
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "good.jsonl", 300)], progress=False)
    store = IndexStore.from_config(config)
    before = store.current_version()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(product_row(1)) + "\n" + '{"uid": "x", "title": 5}\n' * 999, encoding="utf-8")
    capsys.readouterr()
    assert _cli(store.root, "build", "--data", str(bad), "-q") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "999 of 1,000 lines refused (99.9%), more than catalog.max_reject_fraction=0.5" in line
    assert "nothing was written" in line and "--set catalog.max_reject_fraction=1" in line
    assert store.current_version() == before and store.open_current().rows == 300
    assert store.complete_versions() == [before]
    # under the limit it builds
    config_ok = hashing_config(tmp_path / "index", extra=["catalog.max_reject_fraction=1.0"])
    assert build_index(config_ok, [bad], progress=False).rows == 1


def test_update_with_too_many_rejects_fails(tmp_path):
    config, store = _two_versions(tmp_path)
    history = store.complete_versions()
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps(product_row(500)) + "\n" + "{broken\n" * 3, encoding="utf-8")
    with pytest.raises(
        BuildError, match=r"3 of 4 lines refused \(75.0%\), more than catalog.max_reject_fraction=0.5"
    ):
        update_index(config, [data], progress=False)
    assert store.complete_versions() == history
    report = update_index(
        hashing_config(store.root, extra=["catalog.max_reject_fraction=0.75"]), [data], progress=False
    )
    assert report.changed and report.inserted == 1


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_max_reject_fraction_is_validated(value):
    with pytest.raises(ConfigError, match=r"catalog.max_reject_fraction: must be between 0 and 1"):
        load_config(None, [f"catalog.max_reject_fraction={value}"])
    assert load_config(None, []).catalog.max_reject_fraction == 0.5


# --------------------------------------------------------------------------- 4. rejects of failed runs


def _named_path(message: str) -> Path:
    match = re.search(r"the refused lines and why are in (\S+?);", message)
    assert match, message
    return Path(match.group(1))


def test_no_usable_rows_names_a_rejects_file_that_exists(tmp_path, capsys):
    config = hashing_config(tmp_path / "index")
    data = write_rows(tmp_path / "bad.jsonl", [{"uid": "a", "title": ""}, {"uid": "b"}])
    capsys.readouterr()
    assert _cli(tmp_path / "index", "build", "--data", str(data), "-q") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no usable rows" in line
    path = _named_path(line)
    assert path.parent == IndexStore.from_config(config).rejects_dir and path.is_file()
    rejects = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (1, "empty title after cleaning"),
        (2, "missing title"),
    ]
    assert f"rejects: {path}" in line  # the summary names the same file


def test_update_rejects_are_kept_when_it_fails(tmp_path):
    config, store = _two_versions(tmp_path)
    data = tmp_path / "bad.jsonl"
    data.write_text("{nope\n{nope\n", encoding="utf-8")
    with pytest.raises(BuildError) as info:
        update_index(config, [data], progress=False)
    path = _named_path(str(info.value))
    assert path.is_file() and len(path.read_text().splitlines()) == 2
    # a successful run keeps its rejects inside its version, listed in the manifest
    data.write_text(json.dumps(product_row(300)) + "\n{nope\n", encoding="utf-8")
    report = update_index(config, [data], progress=False)
    vdir = store.version_dir(report.version)
    assert (vdir / "update_rejects.jsonl").is_file() and "update_rejects.jsonl" in store.manifest()["files"]
    assert report.read_summary.rejects_path == str(vdir / "update_rejects.jsonl")
    assert sorted(p.name for p in store.rejects_dir.iterdir()) == [path.name]  # only the failed run's


# --------------------------------------------------------------------------- 5. uploads


def test_abandoned_uploads_are_removed_by_the_next_writer_but_live_ones_are_kept(tmp_path):
    config, store = _two_versions(tmp_path)
    with store.upload_file() as live:
        abandoned = store.uploads_dir / "upload-killed.jsonl"  # no process holds it: its server was killed
        abandoned.write_text(json.dumps(product_row(900)) + "\n")
        live.write_text(json.dumps(product_row(901)) + "\n")
        report = update_index(config, [live], progress=False)  # the writer's clean-up runs first
        assert report.inserted == 1 and live.exists()
        assert not abandoned.exists()
    assert not live.exists() and list(store.uploads_dir.iterdir()) == []
    assert os.stat(store.uploads_dir).st_mode & 0o077 == 0
