"""The BM25 description index (index/lexical.py): analysis, scoring, files, updates, build hooks.

.venv/bin/python -m pytest tests/test_lexical.py -q
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index import lexical
from index.lexical import (
    LexicalIndex,
    best_passage,
    build_artifacts,
    query_terms,
    stem,
    update_artifacts,
)
from index.metadata import META_FILE, content_hash, open_for_writing

DOCS = {
    101: (
        "Happy Trails",
        "Roy Rogers, the singing cowboy, and his palomino horse Trigger ride across the West.",
    ),
    102: ("Mog's Kittens", "A board book about Mog the cat and her kittens. For toddlers."),
    103: (
        "The Lighthouse",
        "A keeper's daughter tends the lamp on a storm-bound island. A story of the sea.",
    ),
    104: ("Garlic Press", ""),
    105: ("Cowboy Boots for Men", "Leather boots in brown. The boots fit true to size."),
    106: ("Horse Care Handbook", "How to groom, feed and shoe a horse. Stable routines for every season."),
    107: ("Songs of the Sea", "Sea shanties sung by a harbour choir; the singing is rough and joyful."),
}


def write_meta(path: Path, docs: dict[int, tuple[str, str]]) -> Path:
    conn = open_for_writing(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR REPLACE INTO rows (faiss_id, uid, title, content, content_hash, source, line) VALUES (?,?,?,?,?,?,?)",
        [(fid, f"U{fid}", t, c, content_hash(t, c), None, None) for fid, (t, c) in docs.items()],
    )
    conn.execute("COMMIT")
    conn.close()
    return path


def build(tmp_path: Path, docs: dict[int, tuple[str, str]] = DOCS) -> tuple[Path, list[str]]:
    version = tmp_path / "v1"
    version.mkdir()
    write_meta(version / META_FILE, docs)
    return version, build_artifacts(version / META_FILE, version)


def brute_bm25(docs: dict[int, tuple[str, str]], terms: list[str]) -> dict[int, float]:
    """Textbook BM25 straight from the definition, for comparison."""
    analyzer = lexical.Analyzer()
    bags = {fid: analyzer.terms(t) * lexical.TITLE_WEIGHT + analyzer.terms(c) for fid, (t, c) in docs.items()}
    n = len(bags)
    avgdl = sum(len(b) for b in bags.values()) / n
    weights: dict[str, int] = {}
    for t in terms:
        weights[t] = min(weights.get(t, 0) + 1, 2)
    out: dict[int, float] = {}
    for fid, bag in bags.items():
        s = 0.0
        for t, w in weights.items():
            df = sum(1 for b in bags.values() if t in b)
            tf = bag.count(t)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += (
                    w
                    * idf
                    * tf
                    * (lexical.K1 + 1)
                    / (tf + lexical.K1 * (1 - lexical.B + lexical.B * len(bag) / avgdl))
                )
        if s > 0:
            out[fid] = s
    return out


def test_stemmer_and_query_analysis() -> None:
    assert stem("singing") == stem("sings") == stem("sing") == "sing"
    assert (
        stem("horses") == stem("horse") and stem("stories") == stem("story") and stem("loved") == stem("love")
    )
    assert stem("boxes") == "box" and stem("1942") == "1942"
    # Portuguese question words are dropped, nouns mapped to English, names kept
    terms = query_terms("um livro sobre um cowboy cantor e seu cavalo Trigger")
    assert {"book", "cowboy", stem("horse"), "trigger", "sing"} <= set(terms)
    assert not {"um", "sobre", "seu", "livro"} & set(terms)
    assert "cavalo" in query_terms("cavalo", translate=False)
    assert query_terms("What is the name of that thing?") == []


def test_bm25_scores_match_the_textbook_formula(tmp_path: Path) -> None:
    version, _ = build(tmp_path)
    index = LexicalIndex(version)
    for question in [
        "singing cowboy horse",
        "the sea story",
        "boots boots boots",
        "kittens of Mog",
        "garlic",
    ]:
        terms = query_terms(question)
        expected = brute_bm25(DOCS, terms)
        got = dict(index.score(terms, k=10, exhaustive=True))
        assert got == pytest.approx(dict(index.score(terms, k=10)), rel=1e-6)  # nothing pruned at this size
        assert set(got) == set(expected), question
        for fid, score in expected.items():
            assert got[fid] == pytest.approx(score, rel=2e-3), (question, fid)  # impacts are float16
    ranked = index.search("a book about a singing cowboy and his horse Trigger", k=3)
    assert ranked[0][0] == 101 and 0 < ranked[0][1] <= 1.0
    assert ranked[0][2] == ""  # snippets need the rows' text: see the next test


def test_snippet_is_the_best_matching_sentence(tmp_path: Path) -> None:
    text = "Leather boots in brown. The palomino horse Trigger was famous. Fits true to size."
    assert best_passage(text, set(query_terms("horse Trigger")), max_chars=40).startswith(
        "The palomino horse Trigger"
    )
    assert best_passage(text, set(query_terms("violin"))) == ""
    version, _ = build(tmp_path)
    index = LexicalIndex(version)
    rows = {fid: type("Row", (), {"content": c})() for fid, (_, c) in DOCS.items()}
    hits = index.search("sea shanties sung by a choir", k=2, get_rows=lambda ids: [rows.get(i) for i in ids])
    assert hits[0][0] == 107 and "shanties" in hits[0][2]


def test_pruned_scoring_keeps_the_best_document(tmp_path: Path) -> None:
    # 400 rows share the common words; one row also has the rare word: it must win under any budget
    docs = {i: (f"Item {i}", "a red wooden toy box with a lid and wheels") for i in range(1, 401)}
    docs[999] = ("Item 999", "a red wooden toy box with a lid, wheels and a brass zeppelin")
    version, _ = build(tmp_path, docs)
    index = LexicalIndex(version)
    terms = query_terms("red wooden toy box with wheels and a zeppelin")
    exact = index.score(terms, k=5, exhaustive=True)
    pruned = index.score(terms, k=5, max_postings=50, rescore=20)
    assert exact[0][0] == pruned[0][0] == 999
    assert pruned[0][1] == pytest.approx(exact[0][1], rel=1e-6)  # the rescored candidate gets every term


def test_champion_lists_bound_the_work_and_keep_exact_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lexical, "CHAMPIONS", 30)  # "toy" and friends are in 400 docs: champion lists of 30
    docs = {i: (f"Item {i}", "a red wooden toy box " + "with wheels " * (i % 5)) for i in range(1, 401)}
    docs[999] = ("Item 999", "a red wooden toy box with wheels and a brass zeppelin")
    version, _ = build(tmp_path, docs)
    meta = json.loads((version / lexical.META_NAME).read_text())
    assert meta["champions"] == 30
    champ = np.load(version / "lexical.base.champ_indptr.npy")
    assert set(np.diff(champ).tolist()) == {0, 30}  # common terms: 30 postings, rare terms: none
    index = LexicalIndex(version)
    for question in ["red wooden toy box with wheels zeppelin", "red wooden toy box with wheels"]:
        terms = query_terms(question)
        exact = index.score(terms, k=3, exhaustive=True)
        assert [f for f, _ in exact] == [f for f, _ in sorted(exact, key=lambda r: -r[1])]
        expected = sorted(brute_bm25(docs, terms).items(), key=lambda kv: -kv[1])[:3]
        pruned = index.score(terms, k=3)
        assert pruned[0][1] == pytest.approx(expected[0][1], rel=2e-3), question
        assert exact[0][1] == pytest.approx(expected[0][1], rel=2e-3), question
    assert index.score(query_terms("zeppelin toy"), k=1)[0][0] == 999


def test_files_round_trip_without_pickle(tmp_path: Path) -> None:
    version, names = build(tmp_path)
    assert lexical.META_NAME in names and all((version / n).is_file() and "/" not in n for n in names)
    for name in names:
        if name.endswith(".npy"):
            array = np.load(version / name, allow_pickle=False)  # raises on object arrays
            assert array.dtype != object
        else:
            json.loads((version / name).read_text(encoding="utf-8"))
    meta = json.loads((version / lexical.META_NAME).read_text())
    assert meta["segments"]["base"]["docs"] == len(DOCS)
    terms = json.loads((version / "lexical.base.terms.json").read_text())
    hashes = np.load(version / "lexical.base.hashes.npy")
    assert [lexical.term_hash(t) for t in terms] == hashes.tolist() and np.all(np.diff(hashes) > 0)
    # a reopened index answers like the one just built (memory-mapped or not)
    a = LexicalIndex(version).score(query_terms("sea"), 5)
    b = LexicalIndex(version, mmap=False).score(query_terms("sea"), 5)
    assert a == b and {fid for fid, _ in a} == {103, 107}


def _ranked(index: LexicalIndex, question: str) -> list[int]:
    return [fid for fid, _ in index.score(query_terms(question), k=10)]


def test_incremental_update_matches_a_full_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lexical, "COMPACT_FRACTION", 0.5)
    big = {**DOCS, **{200 + i: (f"Filler {i}", "plain filler text about nothing much") for i in range(10)}}
    v1, _ = build(tmp_path, big)
    # v2: 105 gets a new description, 102 is deleted, 300 is inserted
    docs2 = dict(big)
    docs2[105] = ("Cowboy Boots for Men", "Leather boots; a horse named Trigger is stitched on the side.")
    del docs2[102]
    docs2[300] = ("Kitten Calendar", "Twelve photos of kittens, one per month.")
    v2 = tmp_path / "v2"
    v2.mkdir()
    write_meta(v2 / META_FILE, docs2)
    names = update_artifacts(v2 / META_FILE, v2, v1, ["U105", "U300"], ["U102"])
    meta = json.loads((v2 / lexical.META_NAME).read_text())
    assert meta["segments"]["delta"]["docs"] == 2 and meta["tombstones"] == 3
    # the base is shared with the parent (hard link), not rewritten
    assert os.stat(v2 / "lexical.base.docs.npy").st_ino == os.stat(v1 / "lexical.base.docs.npy").st_ino
    assert set(names) >= {lexical.META_NAME, lexical.TOMBSTONES_NAME, "lexical.delta.docs.npy"}
    inc = LexicalIndex(v2)
    assert 102 not in _ranked(inc, "Mog kittens board book")
    assert _ranked(inc, "kittens")[0] == 300
    assert set(_ranked(inc, "horse Trigger")[:2]) == {101, 105}
    assert _ranked(inc, "brown") == []  # the old text of 105 is gone
    # same result sets and order as a full rebuild of the same rows (scores differ only by idf/avgdl drift)
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    write_meta(full_dir / META_FILE, docs2)
    build_artifacts(full_dir / META_FILE, full_dir)
    full = LexicalIndex(full_dir)
    for q in ["horse Trigger", "kittens", "sea", "boots", "filler nothing"]:
        assert set(_ranked(inc, q)) == set(_ranked(full, q)), q
    # a second update on top of the first keeps earlier delta rows and can delete one of them
    v3 = tmp_path / "v3"
    v3.mkdir()
    docs3 = dict(docs2)
    del docs3[300]
    write_meta(v3 / META_FILE, docs3)
    update_artifacts(v3 / META_FILE, v3, v2, [], ["U300"])
    third = LexicalIndex(v3)
    assert _ranked(third, "kittens") == [] and set(_ranked(third, "horse Trigger")[:2]) == {101, 105}


def test_large_updates_compact_into_a_new_base(tmp_path: Path) -> None:
    v1, _ = build(tmp_path)
    docs2 = {fid: (t, c + " refreshed") for fid, (t, c) in DOCS.items()}
    v2 = tmp_path / "v2"
    v2.mkdir()
    write_meta(v2 / META_FILE, docs2)
    names = update_artifacts(v2 / META_FILE, v2, v1, [f"U{f}" for f in DOCS], [])
    meta = json.loads((v2 / lexical.META_NAME).read_text())
    assert "delta" not in meta["segments"] and meta["tombstones"] == 0
    assert not any("delta" in n for n in names)
    assert len(_ranked(LexicalIndex(v2), "refreshed")) == len(DOCS)


def test_build_and_update_hooks_put_the_files_in_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lexical, "COMPACT_FRACTION", 0.5)  # 7 rows: keep the two changes in a delta
    from index.build import build_index, update_index
    from index.store import IndexStore
    from index.testing import hashing_config, write_rows

    config = hashing_config(tmp_path / "index", extra=["index.descriptions=true"])
    rows = [{"uid": f"U{fid}", "title": t, "content": c} for fid, (t, c) in DOCS.items()]
    build_index(config, [write_rows(tmp_path / "a.jsonl", rows)], progress=False)
    store = IndexStore.from_config(config)
    manifest = store.manifest()
    assert lexical.META_NAME in manifest["files"] and lexical.META_NAME in manifest["artifacts"]
    snap = store.open_current()
    hits = snap.lexical_search("um livro sobre um cowboy cantor e seu cavalo Trigger", 3)
    assert snap.get_rows([hits[0][0]])[0].uid == "U101" and "Trigger" in hits[0][2]
    snap.close()
    # incremental update: new row findable by its description, deleted row gone
    update_index(
        config,
        [
            write_rows(
                tmp_path / "b.jsonl",
                [{"uid": "U900", "title": "Zither Primer", "content": "Learn the zither in ten lessons."}],
            )
        ],
        ["U102"],
        progress=False,
    )
    manifest = store.manifest()
    assert "lexical.delta.docs.npy" in manifest["files"]
    snap = store.open_current()
    assert snap.get_rows([snap.lexical_search("zither lessons", 1)[0][0]])[0].uid == "U900"
    assert all(snap.get_rows([f])[0].uid != "U102" for f, _, _ in snap.lexical_search("Mog kittens", 5))
    snap.close()
    # a damaged description file fails verification like any other file of the version
    path = store.version_dir(store.current_version()) / "lexical.base.impact.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    report = store.verify()
    assert not report.ok and any("lexical.base.impact.npy" in p for p in report.problems)


def test_sqlite_rows_are_read_in_faiss_id_order(tmp_path: Path) -> None:
    version, _ = build(tmp_path)
    ids = np.load(version / "lexical.base.ids.npy")
    conn = sqlite3.connect(version / META_FILE)
    assert ids.tolist() == [r[0] for r in conn.execute("SELECT faiss_id FROM rows ORDER BY faiss_id")]
    conn.close()
