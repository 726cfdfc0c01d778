"""Build, open, search and update of the versioned index (HashingEmbedder: no model, fast).

.venv/bin/python -m pytest tests/test_index_build.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from index.build import build_index, update_index
from index.embedder import HashingEmbedder
from index.store import IndexStore
from index.testing import hashing_config, product_row, write_catalog, write_rows
from index.vector import uid_to_id


@pytest.fixture()
def built(tmp_path):
    config = hashing_config(tmp_path / "index")
    data = write_catalog(tmp_path / "catalog.jsonl", 200, marker="gen=0")
    report = build_index(config, [data], progress=False)
    return config, report, tmp_path


def test_build_open_search_finds_the_exact_title(built):
    config, report, _ = built
    assert report.rows == 200
    store = IndexStore.from_config(config)
    assert store.has_current() and store.current_version() == report.version
    snap = store.open_current()
    assert (snap.rows, snap.dimension, snap.embedding_model) == (200, 64, "hashing-64")
    embedder = HashingEmbedder(64)
    wanted = product_row(17, marker="gen=0")
    scores, ids = snap.search(embedder.embed([wanted["title"]]), 5)
    assert ids.shape == (1, 5) and ids[0, 0] == uid_to_id(wanted["uid"])
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    rows = snap.get_rows([int(ids[0, 0]), -1, 12345])
    assert (
        rows[0].uid == wanted["uid"]
        and rows[0].title == wanted["title"]
        and rows[0].content.endswith("gen=0")
    )
    assert rows[1] is None and rows[2] is None
    assert snap.get_by_uid("P0000017").title == wanted["title"]
    assert sorted(r.uid for r in snap.iter_rows(batch=7)) == [f"P{i:07d}" for i in range(200)]
    # k larger than the index: missing results are -1
    scores, ids = snap.search(embedder.embed(["x"]), 250)
    assert (ids[0] == -1).sum() == 50
    snap.close()


def test_manifest_records_what_the_design_asks(built):
    config, report, _ = built
    manifest = IndexStore.from_config(config).manifest()
    assert manifest["rows"] == 200 and manifest["version"] == report.version
    assert manifest["embedding"] == {
        "model": "hashing-64",
        "config_model": "hashing:64",
        "dimension": 64,
        "max_seq_length": config.embedding.max_seq_length,
    }
    assert manifest["index"]["type"] == "flat"
    assert {"vectors.faiss", "meta.sqlite"} <= set(manifest["files"])
    for entry in manifest["files"].values():
        assert set(entry) == {"size", "sha256"} and len(entry["sha256"]) == 64
    assert manifest["read_summary"]["accepted"] == 200
    assert manifest["sources"][0]["path"].endswith("catalog.jsonl")
    assert manifest["parent"] is None and manifest["created"]


def test_update_upserts_deletes_and_embeds_only_changed_titles(built, tmp_path):
    config, first, _ = built
    store = IndexStore.from_config(config)
    before = store.open_current()
    changes = [
        product_row(5, marker="gen=0", title_variant=2),  # title changed -> re-embedded
        {**product_row(6, marker="gen=0"), "content": "a new description"},  # content only -> metadata
        product_row(7, marker="gen=0"),  # unchanged -> nothing
        product_row(500, marker="gen=1"),  # new
    ]
    data = write_rows(tmp_path / "new.jsonl", changes)
    report = update_index(config, [data], ["P0000010", "P0000011", "NOPE"], progress=False)
    assert (report.inserted, report.updated, report.metadata_only, report.unchanged) == (1, 1, 1, 1)
    assert (report.deleted, report.delete_missing, report.embedded) == (2, 1, 2)
    assert report.rows == 199 and report.parent == first.version
    after = store.open_current()
    assert after.version == report.version and after.rows == 199
    assert after.manifest["parent"] == first.version and after.manifest["operation"] == "update"
    assert after.get_by_uid("P0000010") is None
    assert after.get_by_uid("P0000006").content == "a new description"
    embedder = HashingEmbedder(64)
    new_title = product_row(5, title_variant=2)["title"]
    _, ids = after.search(embedder.embed([new_title]), 1)
    assert ids[0, 0] == uid_to_id("P0000005")  # same id as before: stable per uid
    _, ids = after.search(embedder.embed([product_row(500)["title"]]), 1)
    assert ids[0, 0] == uid_to_id("P0000500")
    # the old snapshot is untouched by the update
    assert before.rows == 200 and before.get_by_uid("P0000010") is not None
    # untouched vectors are bit-identical
    _, old_ids = before.search(embedder.embed([product_row(42)["title"]]), 1)
    _, new_ids = after.search(embedder.embed([product_row(42)["title"]]), 1)
    assert old_ids[0, 0] == new_ids[0, 0] == uid_to_id("P0000042")


def test_update_refuses_a_different_embedding_model(built, tmp_path):
    config, _, _ = built
    other = hashing_config(config.index.path, dim=32)
    data = write_rows(tmp_path / "n.jsonl", [product_row(1000)])
    with pytest.raises(Exception, match="hashing-64.*hashing-32|built with hashing-64"):
        update_index(other, [data], progress=False)


def test_empty_catalog_is_refused_and_leaves_no_version(tmp_path):
    config = hashing_config(tmp_path / "index")
    data = tmp_path / "empty.jsonl"
    data.write_text('{"uid": "a", "title": ""}\n', encoding="utf-8")
    with pytest.raises(Exception, match="no usable rows"):
        build_index(config, [data], progress=False)
    store = IndexStore.from_config(config)
    assert not store.has_current() and store.complete_versions() == []
    assert not any(store.versions_dir.iterdir())


def test_info_json_roundtrip_via_cli(built, capsys):
    from rag.cli import main

    config, report, _ = built
    assert main(["index", "info", "--json", "--set", f"index.path={config.index.path}"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["version"] == report.version
    assert main(["index", "info", "--set", f"index.path={config.index.path}"]) == 0
    out = capsys.readouterr().out
    assert "rows:       200" in out and "hashing-64" in out


def test_uid_to_id_is_stable_non_negative_and_spread():
    assert uid_to_id("B000123") == uid_to_id("B000123")
    ids = {uid_to_id(f"u{i}") for i in range(20000)}
    assert len(ids) == 20000 and min(ids) >= 0 and max(ids) < 2**63
    # a known value pins the function: changing it would silently re-id every stored index
    import hashlib

    expected = int.from_bytes(hashlib.blake2b(b"B000123", digest_size=8).digest(), "little") & (2**63 - 1)
    assert uid_to_id("B000123") == expected
    assert np.int64(uid_to_id("x")) >= 0


def test_faiss_id_collisions_are_salted_and_stay_stable(tmp_path, monkeypatch):
    import index.build as build_module

    real = build_module.uid_to_id
    monkeypatch.setattr(build_module, "uid_to_id", lambda uid: 42 if uid in ("A", "B") else real(uid))
    config = hashing_config(tmp_path / "index")
    rows = [{"uid": "A", "title": "Alpha Garden Cookbook"}, {"uid": "B", "title": "Bravo River Atlas"}]
    build_index(config, [write_rows(tmp_path / "c.jsonl", rows)], progress=False)
    snap = IndexStore.from_config(config).open_current()
    salted = real("B\x001")
    assert [r.uid for r in snap.get_rows([42, salted])] == ["A", "B"]
    # an update of B keeps its salted id
    update_index(
        config,
        [write_rows(tmp_path / "u.jsonl", [{"uid": "B", "title": "Bravo Mountain Atlas"}])],
        progress=False,
    )
    snap = IndexStore.from_config(config).open_current()
    _, found = snap.search(HashingEmbedder(64).embed(["Bravo Mountain Atlas"]), 1)
    assert found[0, 0] == salted and snap.get_rows([salted])[0].title == "Bravo Mountain Atlas"
    assert snap.rows == 2
