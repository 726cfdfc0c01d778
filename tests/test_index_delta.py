"""Segments: base + delta + tombstones, hard-linked bases, carried checksums, compaction.

    .venv/bin/python -m pytest tests/test_index_delta.py -q

An update hard-links the parent's base files and writes a small delta; every test here checks
that a version built that way answers exactly like a fresh build of the same rows.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time

import numpy as np
import pytest

import index.store as store_module
from index.build import build_index, compact_index, update_index
from index.embedder import HashingEmbedder
from index.store import IndexCorruptError, IndexStore, LiveIndex, file_entry
from index.testing import hashing_config, product_row, write_catalog, write_rows
from index.vector import uid_to_id
from rag.cli import main

EMB = HashingEmbedder(64)


def _age(version_dir, seconds: float = 3600) -> None:
    """Make a version's files look old (as after a day of serving): their mtime may then be trusted."""
    past = time.time() - seconds
    for path in version_dir.iterdir():
        os.utime(path, (past, past))
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["files"]:
        manifest["files"][name] = file_entry(version_dir / name)  # records mtime_ns now that they are old
    manifest_path.write_text(json.dumps(manifest))


def _snapshot_state(snap, queries):
    rows = [(r.uid, r.title, r.content) for r in snap.iter_rows(batch=13)]
    scores, ids = snap.search(queries, 7)
    return rows, scores, ids


def _catalog_after(ops_rows: dict[str, dict]) -> list[dict]:
    return [ops_rows[u] for u in sorted(ops_rows)]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_random_updates_answer_like_a_fresh_build(tmp_path, index_type):
    """Inserts, title changes, description changes, deletes and re-inserts over several updates."""
    config = hashing_config(tmp_path / "index", index_type=index_type, extra=["index.compact_ratio=0"])
    fresh_config = hashing_config(tmp_path / "fresh", index_type=index_type)
    rnd = random.Random(7)
    current = {f"P{i:07d}": product_row(i) for i in range(300)}
    build_index(config, [write_rows(tmp_path / "base.jsonl", current.values())], progress=False)
    store = IndexStore.from_config(config)
    next_id = 300
    for step in range(4):
        upserts, deletes = [], []
        for uid in rnd.sample(sorted(current), 25):
            i = int(uid[1:])
            kind = rnd.choice(["title", "content", "delete", "same"])
            if kind == "title":
                current[uid] = product_row(i, title_variant=step + 1, marker=f"s{step}")
                upserts.append(current[uid])
            elif kind == "content":
                current[uid] = {**current[uid], "content": f"new words {step}"}
                upserts.append(current[uid])
            elif kind == "delete":
                del current[uid]
                deletes.append(uid)
            else:
                upserts.append(current[uid])  # unchanged: not re-embedded
        for _ in range(10):
            current[f"P{next_id:07d}"] = product_row(next_id, marker=f"s{step}")
            upserts.append(current[f"P{next_id:07d}"])
            next_id += 1
        if deletes and step == 2:  # a uid deleted and re-inserted in the same update
            back = deletes[0]
            current[back] = product_row(int(back[1:]), title_variant=9)
            upserts.append(current[back])
        report = update_index(
            config, [write_rows(tmp_path / f"u{step}.jsonl", upserts)], deletes, progress=False
        )
        assert not report.compacted and report.rows == len(current)
    snap = store.open_current()
    assert (
        snap.manifest["segments"]["delta"]["vectors"] > 0
        and snap.manifest["segments"]["delta"]["tombstones"] > 0
    )
    assert snap.rows == len(current) == snap.index.ntotal
    build_index(fresh_config, [write_rows(tmp_path / "all.jsonl", _catalog_after(current))], progress=False)
    fresh = IndexStore.from_config(fresh_config).open_current()
    queries = EMB.embed([row["title"] for row in list(current.values())[::9]])
    rows_a, scores_a, ids_a = _snapshot_state(snap, queries)
    rows_b, scores_b, ids_b = _snapshot_state(fresh, queries)
    assert sorted(rows_a) == sorted(rows_b)
    if index_type == "flat":  # exact search: identical results
        assert np.allclose(scores_a, scores_b, atol=1e-5)
        assert (ids_a[:, 0] == ids_b[:, 0]).all()
    # every query finds its own row first, whatever segment it lives in
    assert (ids_a[:, 0] == [uid_to_id(row["uid"]) for row in list(current.values())[::9]]).mean() > 0.95
    for uid in rnd.sample(sorted(current), 20):
        assert snap.get_by_uid(uid).title == current[uid]["title"]
    assert snap.get_by_uid(deletes[-1] if deletes and deletes[-1] not in current else "NOPE") is None
    got = snap.get_rows([uid_to_id(u) for u in sorted(current)[:50]] + [-1, 5])
    assert [r.uid for r in got[:50]] == sorted(current)[:50] and got[50] is None and got[51] is None
    # compaction keeps every answer and leaves one base segment
    compacted = compact_index(config)
    assert compacted.version and compacted.rows == len(current)
    snap2 = store.open_current()
    assert "delta" not in snap2.manifest["segments"] and "delta.faiss" not in snap2.manifest["files"]
    rows_c, scores_c, _ids = _snapshot_state(snap2, queries)
    assert sorted(rows_c) == sorted(rows_b)
    if index_type == "flat":
        assert np.allclose(scores_c, scores_b, atol=1e-5)


def test_update_hard_links_the_base_and_carries_its_checksums(tmp_path, monkeypatch):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 400)], progress=False)
    store = IndexStore.from_config(config)
    parent = store.version_dir(store.current_version())
    _age(parent)
    hashed: list[str] = []
    real = store_module.sha256_file
    monkeypatch.setattr(
        store_module, "sha256_file", lambda path, *a: hashed.append(path.name) or real(path, *a)
    )
    report = update_index(
        config, [write_catalog(tmp_path / "b.jsonl", 5, start=1000)], ["P0000003"], progress=False
    )
    child = store.version_dir(report.version)
    for name in ("vectors.faiss", "meta.sqlite"):
        assert os.path.samefile(parent / name, child / name)  # a hard link: zero copy
        assert name not in hashed  # neither re-hashed for the parent check nor for the new manifest
    new, old = store.manifest(report.version)["files"], store.manifest(parent.name)["files"]
    assert new["vectors.faiss"] == old["vectors.faiss"] and new["meta.sqlite"] == old["meta.sqlite"]
    assert {"delta.faiss", "delta.sqlite", "tombstones.npy"} <= set(hashed)
    manifest = store.manifest()
    assert manifest["segments"]["delta"] == {"rows": 5, "vectors": 5, "tombstones": 1}
    assert manifest["rows"] == 404 and manifest["segments"]["base"]["rows"] == 400
    assert store.verify().ok  # `verify` re-hashes everything, carried entries included
    # a base file modified after it was hashed (mtime changes) is hashed again and refused
    monkeypatch.undo()
    data = bytearray((child / "vectors.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (child / "vectors.faiss").write_bytes(bytes(data))  # shared inode: the parent is damaged too
    with pytest.raises(Exception, match="vectors.faiss: sha256 differs"):
        update_index(config, [write_catalog(tmp_path / "c.jsonl", 1, start=2000)], progress=False)


def test_gc_of_the_parent_keeps_the_hard_linked_child_whole(tmp_path):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 100)], progress=False)
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 3, start=500)], progress=False)
    store = IndexStore.from_config(config)
    assert store.gc(keep=1)  # deletes the parent: one link of each base file goes away
    assert store.verify().ok
    snap = store.open_current()
    assert (
        snap.rows == 103
        and snap.get_by_uid("P0000042") is not None
        and snap.get_by_uid("P0000501") is not None
    )


def test_auto_compaction_by_ratio_and_cli_compact(tmp_path, capsys):
    config = hashing_config(tmp_path / "index", extra=["index.compact_ratio=0.1", "index.compact_min_rows=0"])
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 200)], progress=False)
    small = update_index(config, [write_catalog(tmp_path / "b.jsonl", 5, start=500)], progress=False)
    assert not small.compacted and small.delta_rows == 5
    big = update_index(
        config, [write_catalog(tmp_path / "c.jsonl", 30, start=600)], ["P0000001"], progress=False
    )
    assert big.compacted and big.rows == 234
    store = IndexStore.from_config(config)
    manifest = store.manifest()
    assert (
        manifest["segments"] == {"base": {"rows": 234, "version": big.version}}
        and manifest["update"]["compacted"]
    )
    assert store.open_current().get_by_uid("P0000001") is None
    # the CLI: nothing to compact, then a delta folded into a fresh base
    args = [
        "--set",
        f"index.path={config.index.path}",
        "--set",
        "embedding.model=hashing:64",
        "--set",
        "index.descriptions=false",
        "--set",
        "index.keep_versions=0",
    ]
    assert main(["index", "compact", *args]) == 0
    assert "nothing to compact" in capsys.readouterr().out
    update_index(config, [], ["P0000002"], progress=False)
    assert main(["index", "info", *args]) == 0
    assert "1 tombstones" in capsys.readouterr().out
    assert main(["index", "compact", *args]) == 0
    assert "233 rows in one base segment" in capsys.readouterr().out
    assert store.manifest()["operation"] == "compact" and store.verify().ok


def test_hnsw_update_never_rebuilds_the_graph(tmp_path, monkeypatch):
    from index.vector import FaissIndex

    config = hashing_config(tmp_path / "index", index_type="hnsw")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 300)], progress=False)
    monkeypatch.setattr(
        FaissIndex, "_rebuild_without", lambda *a: pytest.fail("graph rebuilt during an update")
    )
    update_index(
        config,
        [write_rows(tmp_path / "b.jsonl", [product_row(7, title_variant=2)])],
        ["P0000009"],
        progress=False,
    )
    snap = IndexStore.from_config(config).open_current()
    _, ids = snap.search(EMB.embed([product_row(7, title_variant=2)["title"]]), 3)
    assert ids[0, 0] == uid_to_id("P0000007")
    _, ids = snap.search(EMB.embed([product_row(9)["title"]]), 10)
    assert uid_to_id("P0000009") not in ids


def test_search_over_fetches_past_many_tombstoned_neighbours(tmp_path):
    """Deleting the 40 nearest rows of a query must not leave holes in its top-k."""
    config = hashing_config(tmp_path / "index", extra=["index.compact_ratio=0"])
    rows = [{"uid": f"N{i:03d}", "title": f"Copper Lantern Field Guide {i}"} for i in range(60)]
    rows += [product_row(i) for i in range(200)]
    build_index(config, [write_rows(tmp_path / "a.jsonl", rows)], progress=False)
    update_index(config, [], [f"N{i:03d}" for i in range(40)], progress=False)
    snap = IndexStore.from_config(config).open_current()
    _, ids = snap.search(EMB.embed(["Copper Lantern Field Guide"]), 10)
    found = [r.uid for r in snap.get_rows(ids[0])]
    assert len(found) == 10 and all(u.startswith("N") and int(u[1:]) >= 40 for u in found), found


# --------------------------------------------------------------------------- corrupt delta files


@pytest.fixture()
def with_delta(tmp_path):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 100)], progress=False)
    update_index(
        config, [write_catalog(tmp_path / "b.jsonl", 4, start=900)], ["P0000001", "P0000002"], progress=False
    )
    store = IndexStore.from_config(config)
    return store, store.version_dir(store.current_version())


@pytest.mark.parametrize("name", ["delta.faiss", "delta.sqlite", "tombstones.npy"])
def test_flipped_byte_in_a_delta_file_is_refused(with_delta, name):
    store, vdir = with_delta
    path = vdir / name
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.9)] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=f"{name}: sha256 differs"):
        store.open_current()
    assert not store.verify().ok


def test_delta_counts_and_tombstones_are_checked(with_delta):
    store, vdir = with_delta
    manifest_path = vdir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    conn = sqlite3.connect(vdir / "delta.sqlite")
    conn.execute("DELETE FROM rows WHERE faiss_id IN (SELECT faiss_id FROM rows LIMIT 1)")
    conn.commit()
    conn.close()
    manifest["files"]["delta.sqlite"] = file_entry(vdir / "delta.sqlite")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="delta.sqlite: holds 3 rows but manifest.json says 4"):
        store.open_current()
    # unsorted tombstones, re-sealed: refused by shape, not only by checksum
    np.save(vdir / "tombstones.npy", np.array([9, 3], dtype=np.int64), allow_pickle=False)
    manifest["files"]["tombstones.npy"] = file_entry(vdir / "tombstones.npy")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="tombstones.npy: expected a sorted, unique int64 array"):
        store.open_current()
    manifest["rows"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="rows 103 != base 100 - tombstones 2 \\+ delta vectors 4"):
        store.open_current()
    (vdir / "delta.faiss").unlink()
    with pytest.raises(IndexCorruptError, match="delta.faiss: missing"):
        store.open_current()


# --------------------------------------------------------------------------- older versions, hot reload


def test_version_written_before_segments_opens_and_updates(tmp_path):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 50)], progress=False)
    store = IndexStore.from_config(config)
    vdir = store.version_dir(store.current_version())
    manifest = json.loads((vdir / "manifest.json").read_text())
    del manifest["segments"]  # as written by the code before segments
    manifest["files"] = {k: {"size": v["size"], "sha256": v["sha256"]} for k, v in manifest["files"].items()}
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    assert store.open_current().rows == 50
    report = update_index(config, [write_catalog(tmp_path / "b.jsonl", 2, start=100)], progress=False)
    assert report.rows == 52 and store.manifest()["segments"]["base"]["rows"] == 50 and store.verify().ok


def test_live_reload_after_an_update_hashes_only_the_new_files(tmp_path, monkeypatch):
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 300)], progress=False)
    store = IndexStore.from_config(config)
    _age(store.version_dir(store.current_version()))
    live = LiveIndex(store, check_interval_s=0, background_reload=False)
    first = live.snapshot()
    assert first.rows == 300
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 3, start=900)], progress=False)
    hashed: list[str] = []
    real = store_module.sha256_file
    monkeypatch.setattr(
        store_module, "sha256_file", lambda path, *a: hashed.append(path.name) or real(path, *a)
    )
    assert live.snapshot().rows == 303
    assert (
        "vectors.faiss" not in hashed and "meta.sqlite" not in hashed
    )  # same inodes, hashed at the first open
    assert "delta.faiss" in hashed
    assert live.snapshot().index.base is first.index.base  # the loaded base is shared, not read again


def test_an_update_through_the_serving_store_spares_its_reload_the_base(tmp_path, monkeypatch):
    """Right after a build the base is too new to be trusted by mtime at the first open; the
    update's parent check hashes it once it is old enough, and `store=` hands that to the reload."""
    config = hashing_config(tmp_path / "index")
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 300)], progress=False)
    store = IndexStore.from_config(config)
    live = LiveIndex(store, check_interval_s=0, background_reload=False)
    assert live.snapshot().rows == 300  # hashes the new base; too new to remember
    monkeypatch.setattr(store_module, "STABLE_AFTER_NS", 0)  # instead of waiting 2 s
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 3, start=900)], progress=False, store=store)
    hashed: list[str] = []
    real = store_module.sha256_file
    monkeypatch.setattr(
        store_module, "sha256_file", lambda path, *a: hashed.append(path.name) or real(path, *a)
    )
    assert live.reload().rows == 303
    assert "vectors.faiss" not in hashed and "meta.sqlite" not in hashed and "delta.faiss" in hashed
    with pytest.raises(ValueError, match="is not index.path"):
        update_index(config, [], ["P0000001"], progress=False, store=IndexStore(tmp_path / "other"))


def test_damage_to_a_shared_base_file_is_caught_in_every_version_sharing_it(with_delta):
    """The price of hard links (documented): a base file damaged in place is damaged in all its versions."""
    store, vdir = with_delta
    parent = store.manifest()["parent"]
    with open(vdir / "meta.sqlite", "r+b") as fh:
        fh.truncate(4096)
    for version in (vdir.name, parent):
        report = store.verify(version)
        assert not report.ok and "meta.sqlite: size 4096 bytes" in report.problems[0]
