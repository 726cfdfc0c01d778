"""Index lifecycle: versions, rollback, gc, verify, the writer lock, corrupt files, hot reload, the lexical hook.

.venv/bin/python -m pytest tests/test_index_lifecycle.py -q
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

from index.build import build_index, update_index
from index.embedder import HashingEmbedder
from index.store import (
    IndexCorruptError,
    IndexLockedError,
    IndexMissingError,
    IndexStore,
    LiveIndex,
    file_entry,
)
from index.testing import hashing_config, product_row, write_catalog
from rag.cli import main


def _cli(config, *args: str) -> int:
    return main(
        [
            "index",
            *args,
            "--set",
            f"index.path={config.index.path}",
            "--set",
            "embedding.model=hashing:64",
            "--set",
            "index.descriptions=false",
            "--set",
            "index.keep_versions=0",
        ]
    )


@pytest.fixture()
def three_versions(tmp_path):
    """A store with versions of 100, 110 and 90 rows (build, update, update)."""
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 100, marker="gen=0")], progress=False)
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 10, start=100, marker="gen=1")], progress=False)
    update_index(config, [], [f"P{i:07d}" for i in range(20)], progress=False)
    return config, IndexStore.from_config(config)


# --------------------------------------------------------------------------- versions, rollback, gc


def test_versions_rollback_and_gc(three_versions, capsys):
    _config, store = three_versions
    versions = store.versions()
    assert [v["rows"] for v in versions] == [100, 110, 90]
    assert [v["is_current"] for v in versions] == [False, False, True]
    assert [v["operation"] for v in versions] == ["build", "update", "update"]
    assert versions[1]["parent"] == versions[0]["version"] and versions[2]["parent"] == versions[1]["version"]

    assert store.rollback() == versions[1]["version"]
    assert store.open_current().rows == 110
    assert store.rollback(versions[0]["version"]) == versions[0]["version"]
    assert store.open_current().rows == 100
    with pytest.raises(IndexMissingError, match="no version older"):
        store.rollback()
    with pytest.raises(IndexMissingError, match="no such complete version"):
        store.rollback("v-nope")

    # gc keeps the newest N plus the current one (here the oldest, after the rollbacks)
    removed = store.gc(keep=1)
    assert removed == [versions[1]["version"]]
    assert [v["version"] for v in store.versions()] == [versions[0]["version"], versions[2]["version"]]
    assert store.open_current().rows == 100
    with pytest.raises(ValueError, match="keep"):
        store.gc(keep=0)


def test_cli_versions_rollback_gc_verify(three_versions, capsys):
    config, store = three_versions
    ids = [v["version"] for v in store.versions()]
    assert _cli(config, "versions") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 3 and f"* {ids[2]}" in out and "90 rows" in out
    assert _cli(config, "rollback") == 0
    assert f"{ids[2]} -> {ids[1]}" in capsys.readouterr().out
    assert store.current_version() == ids[1]
    assert _cli(config, "rollback", ids[2]) == 0
    capsys.readouterr()
    assert _cli(config, "verify") == 0
    assert "OK" in capsys.readouterr().out
    assert _cli(config, "gc", "--keep", "2") == 0
    assert ids[0] in capsys.readouterr().out
    assert [v["version"] for v in store.versions()] == ids[1:]
    assert _cli(config, "rollback", "v-nope") == 2
    assert "no such complete version" in capsys.readouterr().err


def test_keep_versions_prunes_after_each_write(tmp_path):
    config = hashing_config(tmp_path / "index", keep_versions=2)
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 50)], progress=False)
    for i in range(3):
        report = update_index(
            config, [write_catalog(tmp_path / f"u{i}.jsonl", 1, start=100 + i)], progress=False
        )
    store = IndexStore.from_config(config)
    assert len(store.complete_versions()) == 2 and store.current_version() == report.version
    assert report.removed_versions


def test_cli_build_without_data_uses_config_data(tmp_path, capsys):
    data = write_catalog(tmp_path / "default.jsonl", 30)
    config = hashing_config(tmp_path / "index")
    assert (
        main(
            [
                "index",
                "build",
                "-q",
                "--set",
                f"data={data}",
                "--set",
                f"index.path={config.index.path}",
                "--set",
                "embedding.model=hashing:64",
                "--set",
                "index.descriptions=false",
            ]
        )
        == 0
    )
    assert "30 rows" in capsys.readouterr().out
    assert _cli(config, "update", "--data", str(write_catalog(tmp_path / "n.jsonl", 2, start=500))) == 0
    assert "inserted 2" in capsys.readouterr().out
    uids = tmp_path / "gone.txt"
    uids.write_text("# comment\nP0000000\n\nP0000001\n", encoding="utf-8")
    assert _cli(config, "update", "--delete", str(uids)) == 0
    assert "deleted 2" in capsys.readouterr().out
    assert IndexStore.from_config(config).open_current().rows == 30
    assert _cli(config, "update") == 2
    assert "nothing to do" in capsys.readouterr().err


def test_missing_index_errors_say_what_to_do(tmp_path, capsys):
    store = IndexStore(tmp_path / "none")
    assert not store.has_current() and store.current_version() is None and store.versions() == []
    with pytest.raises(IndexMissingError, match="rag index build"):
        store.open_current()
    config = hashing_config(tmp_path / "none")
    assert _cli(config, "info") == 2
    assert "rag index build" in capsys.readouterr().err
    with pytest.raises(Exception, match="no index to update"):
        update_index(config, [], ["x"], progress=False)


# --------------------------------------------------------------------------- lock


def test_second_writer_fails_fast_naming_the_lock_and_pid(tmp_path):
    config = hashing_config(tmp_path / "index")
    data = write_catalog(tmp_path / "a.jsonl", 20)
    store = IndexStore.from_config(config)
    with store.lock():
        started = time.perf_counter()
        with pytest.raises(IndexLockedError) as info:
            build_index(config, [data], progress=False)
        assert time.perf_counter() - started < 1.0
        message = str(info.value)
        assert str(store.root / "lock") in message and f"pid {os.getpid()}" in message
        with pytest.raises(IndexLockedError):
            store.gc(keep=1)
    build_index(config, [data], progress=False)  # released: works again


def test_lock_held_by_another_process(tmp_path):
    config = hashing_config(tmp_path / "index")
    root = config.index.path
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from index.store import IndexStore
            lock = IndexStore({root!r}).lock(); lock.acquire()
            print("held", flush=True); time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
            build_index(config, [write_catalog(tmp_path / "a.jsonl", 5)], progress=False)
    finally:
        holder.kill()
        holder.wait()
    build_index(
        config, [write_catalog(tmp_path / "a.jsonl", 5)], progress=False
    )  # the kernel dropped the lock


# --------------------------------------------------------------------------- corrupt files


@pytest.fixture()
def one_version(tmp_path):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 200)], progress=False)
    store = IndexStore.from_config(config)
    return store, store.version_dir(store.current_version())


def _flip(path, offset_fraction=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_truncated_vectors_are_refused(one_version):
    store, vdir = one_version
    path = vdir / "vectors.faiss"
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    with pytest.raises(IndexCorruptError, match="vectors.faiss.*truncated"):
        store.open_current()
    with pytest.raises(IndexCorruptError, match="vectors.faiss"):
        store.open_current(checksums=False)  # the size check is always on
    report = store.verify()
    assert not report.ok and "vectors.faiss" in report.summary()


def test_flipped_byte_is_refused(one_version):
    store, vdir = one_version
    _flip(vdir / "vectors.faiss", 0.7)  # inside the vector data: FAISS itself would not notice
    with pytest.raises(IndexCorruptError, match="vectors.faiss: sha256 differs"):
        store.open_current()
    assert store.open_current(checksums=False).rows == 200  # documented: sizes only when checksums are off
    report = store.verify()
    assert not report.ok and "sha256 differs" in report.problems[0]


def test_flipped_byte_in_metadata_is_refused(one_version):
    store, vdir = one_version
    _flip(vdir / "meta.sqlite", 0.5)
    with pytest.raises(IndexCorruptError, match="meta.sqlite: sha256 differs"):
        store.open_current()


def test_deleted_metadata_db_is_refused(one_version, capsys):
    store, vdir = one_version
    (vdir / "meta.sqlite").unlink()
    with pytest.raises(IndexCorruptError, match="meta.sqlite: missing"):
        store.open_current()
    assert main(["index", "verify", "--set", f"index.path={store.root}"]) == 1
    assert "meta.sqlite: missing" in capsys.readouterr().out


def test_mismatched_counts_are_refused(one_version):
    store, vdir = one_version
    meta = vdir / "meta.sqlite"
    conn = sqlite3.connect(meta)
    conn.execute("DELETE FROM rows WHERE faiss_id IN (SELECT faiss_id FROM rows LIMIT 1)")
    conn.commit()
    conn.close()
    # re-seal the manifest so only the count check can catch it
    manifest_path = vdir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["meta.sqlite"] = file_entry(meta)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="meta.sqlite: holds 199 rows but manifest.json says 200"):
        store.open_current()
    manifest["rows"] = 199
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="rows 199 but base segment 200"):
        store.open_current()  # the manifest disagrees with itself
    manifest["segments"]["base"]["rows"] = 199
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        IndexCorruptError, match="vectors.faiss: holds 200 vectors but manifest.json says 199"
    ):
        store.open_current()


def test_broken_or_missing_manifest_is_refused(one_version):
    store, vdir = one_version
    (vdir / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="manifest.json: not valid JSON"):
        store.open_current()
    (vdir / "manifest.json").unlink()
    with pytest.raises(IndexCorruptError, match="manifest.json: missing"):
        store.open_version(vdir.name)


def test_missing_version_dir_is_reported(one_version):
    store, _vdir = one_version
    store.switch_current("v-gone")
    with pytest.raises(IndexMissingError, match="v-gone: version directory not found"):
        store.open_current()


def test_update_refuses_to_build_on_a_corrupt_parent(one_version, tmp_path):
    store, vdir = one_version
    _flip(vdir / "vectors.faiss", 0.7)
    config = hashing_config(store.root)
    with pytest.raises(Exception, match="fails verification"):
        update_index(config, [write_catalog(tmp_path / "n.jsonl", 1, start=900)], progress=False)
    assert store.complete_versions() == [vdir.name]


# --------------------------------------------------------------------------- hot reload


def test_live_index_switches_and_keeps_serving_the_good_version(tmp_path):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 50, marker="gen=0")], progress=False)
    store = IndexStore.from_config(config)
    live = LiveIndex(store, check_interval_s=0, background_reload=False)
    first = live.snapshot()
    assert first.rows == 50

    update_index(config, [write_catalog(tmp_path / "b.jsonl", 5, start=50)], progress=False)
    second = live.snapshot()
    assert second.rows == 55 and second.version != first.version
    # the handed-out snapshot still works, even after gc deleted its files
    store.gc(keep=1)
    assert not first.path.exists()
    _, ids = first.search(HashingEmbedder(64).embed([product_row(3)["title"]]), 1)
    assert first.get_rows(ids[0])[0].uid == "P0000003"

    # a new version that fails verification: keep serving the previous one, say why
    bad = update_index(config, [write_catalog(tmp_path / "c.jsonl", 5, start=60)], progress=False)
    # damage a file of that version only: its base files are hard links shared with `second`
    # (docs/index.md, "Segments"), so truncating vectors.faiss would damage both
    with open(store.version_dir(bad.version) / "delta.faiss", "r+b") as fh:
        fh.truncate(100)
    assert live.snapshot().version == second.version
    assert "delta.faiss" in live.last_error
    # once a good version is current again, switch to it
    store.rollback(second.version)
    good = update_index(config, [write_catalog(tmp_path / "d.jsonl", 1, start=70)], progress=False)
    assert live.snapshot().version == good.version and live.last_error is None


def test_live_index_checks_at_most_every_interval(tmp_path):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 10)], progress=False)
    live = LiveIndex(IndexStore.from_config(config), check_interval_s=3600, background_reload=False)
    first = live.snapshot()
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 1, start=10)], progress=False)
    assert live.snapshot() is first  # not checked yet
    assert live.reload().rows == 11  # an explicit reload checks now


def test_live_index_reloads_in_the_background_without_blocking_callers(tmp_path, monkeypatch):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 10)], progress=False)
    store = IndexStore.from_config(config)
    live = LiveIndex(store, check_interval_s=0)
    first = live.snapshot()
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 1, start=10)], progress=False)
    real_open = store.open_version
    release = threading.Event()

    def slow_open(*args, **kwargs):  # stands in for hashing a large index
        release.wait(10)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(store, "open_version", slow_open)
    started = time.perf_counter()
    for _ in range(20):
        assert live.snapshot() is first  # callers keep the old version while the new one loads
    assert time.perf_counter() - started < 1.0
    release.set()
    deadline = time.monotonic() + 10
    while live.snapshot().rows != 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.snapshot().rows == 11


# --------------------------------------------------------------------------- the lexical hook


def test_lexical_hook_artifacts_are_listed_and_verified(tmp_path, monkeypatch):
    calls = []

    def build_artifacts(meta_db_path, version_dir, config):
        calls.append(("build", meta_db_path.name))
        n = sqlite3.connect(meta_db_path).execute("select count(*) from rows").fetchone()[0]
        (version_dir / "fake_lexical.bin").write_bytes(b"x" * n)
        return ["fake_lexical.bin"]

    fake = types.ModuleType("index.lexical")
    fake.build_artifacts = build_artifacts
    monkeypatch.setitem(sys.modules, "index.lexical", fake)
    config = hashing_config(tmp_path / "index", extra=["index.descriptions=true"])
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 40)], progress=False)
    update_index(config, [], ["P0000000"], progress=False)  # no update_artifacts: build_artifacts again
    assert calls == [("build", "meta.sqlite"), ("build", "meta.sqlite")]
    store = IndexStore.from_config(config)
    snap = store.open_current()
    assert snap.artifacts == ["fake_lexical.bin"] and "fake_lexical.bin" in snap.manifest["files"]
    assert (snap.path / "fake_lexical.bin").stat().st_size == 39
    (snap.path / "fake_lexical.bin").write_bytes(b"y" * 39)  # same size, other bytes
    with pytest.raises(IndexCorruptError, match="fake_lexical.bin: sha256 differs"):
        store.open_current()


def test_lexical_hook_is_skipped_when_descriptions_are_off(tmp_path, monkeypatch):
    fake = types.ModuleType("index.lexical")
    fake.build_artifacts = lambda *a: pytest.fail("must not be called")
    monkeypatch.setitem(sys.modules, "index.lexical", fake)
    config = hashing_config(tmp_path / "index")  # descriptions=false
    report = build_index(config, [write_catalog(tmp_path / "a.jsonl", 10)], progress=False)
    assert IndexStore.from_config(config).manifest(report.version)["artifacts"] == []
