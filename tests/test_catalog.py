"""The catalog reader (rag/catalog.py): formats, validation, rejects file, duplicate policies.

.venv/bin/python -m pytest tests/test_catalog.py -q
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from rag.catalog import CatalogError, CatalogReader, ReadSummary, iter_raw_records, read_catalog, stable_uid
from rag.config import CatalogConfig, load_config
from rag.types import CatalogRow


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _record(uid: str | int | None, title: object, content: object = "", **extra: object) -> bytes:
    return json.dumps({"uid": uid, "title": title, "content": content, "target_ind": [], **extra}).encode()


def _rejects(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _assert_adds_up(summary: ReadSummary) -> None:
    assert summary.read == summary.accepted + summary.rejected + summary.duplicates


def test_broken_lines_are_rejected_with_line_and_reason(tmp_path: Path) -> None:
    lines = [
        b"\xef\xbb\xbf"
        + _record(
            "A1", "Good &amp; Plenty", "It&#8217;s fine.--This text refers to thePaperbackedition."
        ),  # 1 BOM
        b'{"uid": "A2", "title": "Cut off in the mid',  # 2 truncated JSON
        b"",  # 3 blank
        b"   \t",  # 4 blank
        b'{"uid": "A3", "title": "Caf\xe9 latin-1", "content": ""}',  # 5 invalid UTF-8
        _record("A4", 42),  # 6 title not a string
        json.dumps({"uid": "A5", "content": "no title"}).encode(),  # 7 missing title
        _record("A1", "Same uid again"),  # 8 duplicate of line 1
        _record("A6", "Content is a list", ["x"]),  # 9 content wrong type
        _record(None, "No uid here", None),  # 10 accepted with a stable uid
        b"[1, 2, 3]",  # 11 not an object
        _record(True, "Boolean uid"),  # 12 uid wrong type
        _record("A7", "&nbsp; \u200b "),  # 13 title empty after cleaning
        _record(12345, "Integer uid", "Plain text."),  # 14 accepted, uid "12345"
        _record("A8", "Only boilerplate", "Copyright 1999 Reed Business Information, Inc."),  # 15 kept, empty
    ]
    data = _write_lines(tmp_path / "broken.jsonl", lines)
    rejects_path = tmp_path / "out" / "rejects.jsonl"
    rows, summary = read_catalog([data], rejects_path=rejects_path)

    assert [r.line for r in rows] == [1, 10, 14, 15]
    first = rows[0]
    assert (first.uid, first.title, first.content) == ("A1", "Good & Plenty", "It\u2019s fine.")
    assert first.source == str(data)
    assert rows[1].uid == stable_uid("No uid here", "") and rows[1].uid.startswith("h:")
    assert rows[2].uid == "12345"
    assert rows[3].content == ""

    assert summary.read == 13  # blank lines are not records
    assert summary.blank_lines == 2
    assert (summary.accepted, summary.rejected, summary.duplicates) == (4, 8, 1)
    assert summary.empty_content == 2
    _assert_adds_up(summary)

    rejects = {r["line"]: r for r in _rejects(rejects_path)}
    assert set(rejects) == {2, 5, 6, 7, 8, 9, 11, 12, 13}
    expected_reasons = {
        2: "invalid JSON",
        5: "invalid UTF-8",
        6: "title is not a string (got int)",
        7: "missing title",
        8: "duplicate uid (first seen at line 1)",
        9: "content is not a string or null (got list)",
        11: "not a JSON object (got list)",
        12: "uid is not a string, integer or null (got bool)",
        13: "empty title after cleaning",
    }
    for line, reason in expected_reasons.items():
        assert rejects[line]["reason"].startswith(reason), (line, rejects[line])
        assert rejects[line]["source"] == str(data)
    assert rejects[5]["raw"] == '{"uid": "A3", "title": "Caf\\xe9 latin-1", "content": ""}'
    assert rejects[2]["raw"] == '{"uid": "A2", "title": "Cut off in the mid'
    assert summary.reasons["invalid JSON"] == 1 and summary.reasons["duplicate uid"] == 1
    assert sum(summary.reasons.values()) == summary.rejected + summary.duplicates
    line = summary.summary()
    assert "read 13 = accepted 4 + rejected 8 + duplicates 1" in line and str(rejects_path) in line
    assert json.loads(json.dumps(summary.to_dict()))["accepted"] == 4


def test_raw_is_cut_to_2000_characters(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "long.jsonl", [b'{"uid": "X", "title": "' + b"a" * 5000])
    _, summary = read_catalog([data], rejects_path=tmp_path / "r.jsonl")
    (reject,) = _rejects(tmp_path / "r.jsonl")
    assert len(reject["raw"]) == 2000 and summary.rejected == 1


def test_without_rejects_path_only_counts(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "a.jsonl", [_record("A", "T"), b"{oops"])
    rows, summary = read_catalog([data])
    assert len(rows) == 1 and summary.rejected == 1 and summary.rejects_path is None
    assert "not written" in summary.summary()
    assert list(tmp_path.iterdir()) == [data]


def test_config_rejects_path_wins_over_argument(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "a.jsonl", [b"{oops"])
    config = CatalogConfig(rejects_path=str(tmp_path / "from_config.jsonl"))
    _, summary = read_catalog([data], config=config, rejects_path=tmp_path / "from_arg.jsonl")
    assert summary.rejects_path == str(tmp_path / "from_config.jsonl")
    assert (tmp_path / "from_config.jsonl").exists() and not (tmp_path / "from_arg.jsonl").exists()


def _array_text(records: list[dict]) -> str:
    return "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"


def test_json_array_input(tmp_path: Path) -> None:
    records = [{"uid": f"U{i}", "title": f"Title {i}", "content": "x" * i} for i in range(5)]
    data = tmp_path / "catalog.json"
    data.write_text("\ufeff  " + _array_text(records), encoding="utf-8")
    rows, summary = read_catalog([data])
    assert [(r.uid, r.line) for r in rows] == [(f"U{i}", i + 1) for i in range(5)]  # line = array position
    assert summary.read == 5 and summary.empty_content == 1
    _assert_adds_up(summary)


def test_json_array_with_broken_elements(tmp_path: Path) -> None:
    data = tmp_path / "broken.json"
    data.write_bytes(
        b'[{"uid": "A", "title": "ok"}, {"uid": "B", "title": "bad \xff byte"}, '
        b'{"uid": "C", "title": oops}, 7, {"uid": "D", "title": "fine"}, {"uid": "E", "ti'
    )
    rows, summary = read_catalog([data], rejects_path=tmp_path / "r.jsonl")
    assert [(r.uid, r.line) for r in rows] == [("A", 1), ("D", 5)]
    reasons = {r["line"]: r["reason"] for r in _rejects(tmp_path / "r.jsonl")}
    assert reasons[2].startswith("invalid UTF-8")
    assert reasons[3].startswith("invalid JSON")
    assert reasons[4].startswith("not a JSON object")
    assert reasons[6].startswith("invalid JSON")
    assert summary.read == 6
    _assert_adds_up(summary)


def test_json_array_spanning_many_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.catalog

    monkeypatch.setattr(rag.catalog, "_CHUNK_CHARS", 64)  # elements cross chunk boundaries
    records = [
        {"uid": f"U{i}", "title": f"Title number {i}", "content": "word " * (i % 40)} for i in range(300)
    ]
    data = tmp_path / "big.json"
    data.write_text(_array_text(records), encoding="utf-8")
    rows, summary = read_catalog([data])
    assert [r.uid for r in rows] == [f"U{i}" for i in range(300)]
    assert summary.rejected == 0


@pytest.mark.parametrize("kind", ["lines", "array"])
def test_gzip_input(tmp_path: Path, kind: str) -> None:
    records = [{"uid": f"G{i}", "title": f"Gz &amp; {i}", "content": None} for i in range(50)]
    text = _array_text(records) if kind == "array" else "".join(json.dumps(r) + "\n" for r in records)
    data = tmp_path / f"catalog.{kind}.gz"
    with gzip.open(data, "wt", encoding="utf-8") as out:
        out.write(text)
    rows, summary = read_catalog([data])
    assert len(rows) == 50 and rows[3].title == "Gz & 3" and rows[3].line == 4
    assert summary.empty_content == 50


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    data = tmp_path / "cut.jsonl.gz"
    blob = gzip.compress(b"".join(_record(f"U{i}", "T" * 50) + b"\n" for i in range(2000)))
    data.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        CatalogError,
        match=r"cut.jsonl.gz: the gzip data ends before its end-of-stream marker "
        r"\(after line \d+.*the file is truncated",
    ):
        read_catalog([data])


def test_gzip_with_trailing_garbage_or_damage_says_what_is_wrong(tmp_path: Path) -> None:
    """Issue 12, 8: not "is the file complete?" for a complete file followed by garbage; zlib errors too."""
    blob = gzip.compress(b"".join(_record(f"U{i}", "T" * 50) + b"\n" for i in range(200)))
    trailing, damaged = tmp_path / "trailing.jsonl.gz", tmp_path / "damaged.jsonl.gz"
    trailing.write_bytes(blob + b"this is not gzip")
    damaged.write_bytes(blob[:20] + b"\x00" * 30 + blob[50:])
    with pytest.raises(
        CatalogError, match="trailing.jsonl.gz: bytes that are not gzip follow the end of the gzip data"
    ) as info:
        read_catalog([trailing])
    assert "complete?" not in str(info.value)
    with pytest.raises(
        CatalogError, match="damaged.jsonl.gz: the gzip data is damaged"
    ):  # was a bare zlib.error
        read_catalog([damaged])
    with pytest.raises(CatalogError, match="is a directory"):
        read_catalog([tmp_path])


def test_a_line_over_max_line_bytes_is_rejected_without_reading_it_into_memory(tmp_path: Path) -> None:
    """Issue 12, 9: one 52 MB line cost ~1 GB in the reader; now it is one reject (catalog.max_line_bytes)."""
    data = tmp_path / "long.jsonl"
    with open(data, "wb") as out:
        out.write(_record("A", "Before") + b"\n")
        out.write(b'{"uid": "L", "title": "' + b"x" * 3000 + b'"}\r\n')
        out.write(_record("B", "After") + b"\n")
        out.write(b'{"uid": "M", "title": "' + b"y" * 5000)  # the last line, cut and long
    config = CatalogConfig(max_line_bytes=1000)
    rows, summary = read_catalog([data], config, rejects_path=tmp_path / "rejects.jsonl")
    assert [r.uid for r in rows] == ["A", "B"]
    assert (summary.read, summary.accepted, summary.rejected) == (4, 2, 2)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (2, "line longer than catalog.max_line_bytes=1000 (3,025 bytes)"),
        (4, "line longer than catalog.max_line_bytes=1000 (5,023 bytes)"),
    ]
    assert all(len(r["raw"]) <= 1001 for r in rejects)
    # after a JSON array's `]` the same limit holds
    data.write_bytes(
        b'[{"uid": "C", "title": "In array"}]\n'
        b'{"uid": "L", "title": "' + b"x" * 3000 + b'"}\n' + _record("D", "After array") + b"\n"
    )
    rows, summary = read_catalog([data], config)
    assert [r.uid for r in rows] == ["C", "D"] and summary.reasons == {
        "line longer than catalog.max_line_bytes=1000": 1
    }


def _dup_file(tmp_path: Path) -> Path:
    return _write_lines(
        tmp_path / "dups.jsonl",
        [
            _record("X", "First X"),
            _record("Y", "Only Y"),
            _record("X", "Second X"),
            _record("X", "Third X"),
        ],
    )


def test_duplicates_keep_first(tmp_path: Path) -> None:
    rows, summary = read_catalog([_dup_file(tmp_path)], rejects_path=tmp_path / "r.jsonl")
    assert [(r.uid, r.title) for r in rows] == [("X", "First X"), ("Y", "Only Y")]
    assert (summary.duplicates, summary.rejected) == (2, 0)
    assert [r["reason"] for r in _rejects(tmp_path / "r.jsonl")] == [
        "duplicate uid (first seen at line 1)"
    ] * 2
    _assert_adds_up(summary)


def test_duplicates_keep_last(tmp_path: Path) -> None:
    config = CatalogConfig(duplicate_policy="keep_last")
    rows, summary = read_catalog([_dup_file(tmp_path)], config=config, rejects_path=tmp_path / "r.jsonl")
    assert [(r.uid, r.title, r.line) for r in rows] == [("Y", "Only Y", 2), ("X", "Third X", 4)]
    assert (summary.duplicates, summary.rejected) == (2, 0)
    rejects = _rejects(tmp_path / "r.jsonl")
    assert [r["line"] for r in rejects] == [1, 3]
    assert all(r["reason"].startswith("duplicate uid") and "line 4" in r["reason"] for r in rejects)
    _assert_adds_up(summary)


def test_duplicates_reject(tmp_path: Path) -> None:
    config = CatalogConfig(duplicate_policy="reject")
    rows, summary = read_catalog([_dup_file(tmp_path)], config=config)
    assert [r.title for r in rows] == ["First X", "Only Y"]
    assert (summary.duplicates, summary.rejected) == (0, 2)
    assert summary.reasons == {"duplicate uid": 2}
    _assert_adds_up(summary)


def test_duplicates_across_files_name_the_first_file(tmp_path: Path) -> None:
    a = _write_lines(tmp_path / "a.jsonl", [_record("X", "From a")])
    b = _write_lines(tmp_path / "b.jsonl", [_record("X", "From b")])
    rows, summary = read_catalog([a, b], rejects_path=tmp_path / "r.jsonl")
    assert [r.title for r in rows] == ["From a"] and summary.sources == [str(a), str(b)]
    (reject,) = _rejects(tmp_path / "r.jsonl")
    assert reject["source"] == str(b) and str(a) in reject["reason"]


def test_keep_empty_content_false(tmp_path: Path) -> None:
    data = _write_lines(
        tmp_path / "a.jsonl",
        [
            _record("A", "Has content", "Some words."),
            _record("B", "No content", None),
            _record("C", "Blank content", "   "),
        ],
    )
    rows, summary = read_catalog([data], config=CatalogConfig(keep_empty_content=False))
    assert [r.uid for r in rows] == ["A"]
    assert summary.reasons == {"empty content": 2} and summary.empty_content == 0
    _assert_adds_up(summary)


def test_overlong_fields_truncate_or_reject(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "a.jsonl", [_record("A", "word " * 30, "text " * 100)])
    config = CatalogConfig(max_title_chars=50, max_content_chars=120)
    (row,), summary = read_catalog([data], config=config)
    assert len(row.title) <= 50 and len(row.content) <= 120 and summary.truncated == 1
    assert row.content.endswith("text")  # cut at a word
    config.overlong = "reject"
    rows, summary = read_catalog([data], config=config)
    assert rows == [] and summary.reasons == {"title longer than catalog.max_title_chars=50": 1}


def test_stable_uid_is_deterministic() -> None:
    uid = stable_uid("A Title", "Some content")
    assert uid == stable_uid("A Title", "Some content")
    assert re.fullmatch(r"h:[0-9a-f]{16}", uid)
    assert uid != stable_uid("A Title", "Other content")
    assert stable_uid("ab", "c") != stable_uid("a", "bc")
    assert uid == "h:" + __import__("hashlib").sha256(b"A Title\x1fSome content").hexdigest()[:16]


def test_same_product_in_different_encodings_gets_the_same_uid(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "a.jsonl", [_record(None, "Tom &amp; Jerry"), _record("", "Tom & Jerry")])
    rows, summary = read_catalog([data])
    assert len(rows) == 1 and summary.duplicates == 1


def test_reader_streams_and_summary_completes(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "a.jsonl", [_record(f"U{i}", f"T{i}") for i in range(10)])
    reader = CatalogReader(rejects_path=None)
    iterator = reader.iter_rows([data])
    first = next(iterator)
    assert isinstance(first, CatalogRow) and reader.summary.accepted == 1  # nothing read ahead
    rest = list(iterator)
    assert len(rest) == 9 and reader.summary.accepted == 10 and reader.summary.seconds >= 0
    # a second pass resets the counts
    assert len(list(reader.iter_rows(data))) == 10 and reader.summary.read == 10


def test_progress_bar_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_lines(tmp_path / "a.jsonl", [_record(f"U{i}", f"T{i}") for i in range(10)])
    rows = list(CatalogReader().iter_rows([data], progress=True))
    assert len(rows) == 10


def test_iter_raw_records(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "a.jsonl", [_record("A", "T"), b"", b"{bad"])
    records = list(iter_raw_records(data))
    assert records[0] == (1, {"uid": "A", "title": "T", "content": "", "target_ind": []})
    assert records[1][0] == 3 and isinstance(records[1][1], ValueError)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_catalog([tmp_path / "missing.jsonl"])
    with pytest.raises(CatalogError, match="is a directory"):
        read_catalog([tmp_path])
    with pytest.raises(ValueError, match="duplicate_policy"):
        CatalogReader(CatalogConfig(duplicate_policy="keep_all"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"boilerplate_patterns\[0\]"):
        CatalogReader(CatalogConfig(boilerplate_patterns=["(unclosed"]))


def test_catalog_section_loads_from_overrides() -> None:
    config = load_config(None, ["catalog.duplicate_policy=keep_last", "catalog.overlong=reject"])
    assert config.catalog.duplicate_policy == "keep_last" and config.catalog.overlong == "reject"


def test_json_array_broken_element_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.catalog

    monkeypatch.setattr(rag.catalog, "_CHUNK_CHARS", 16)
    records = [
        json.dumps({"uid": f"U{i}", "title": f"Title {i}", "content": "some words, more words"})
        for i in range(20)
    ]
    records[7] = '{"uid": "U7", "title": broken, "content": "a, b, c, d, e, f, g, h, i, j"}'
    data = tmp_path / "a.json"
    data.write_text("[" + ", ".join(records) + "]", encoding="utf-8")
    rows, summary = read_catalog([data], rejects_path=tmp_path / "r.jsonl")
    assert [r.uid for r in rows] == [f"U{i}" for i in range(20) if i != 7]
    assert [r["line"] for r in _rejects(tmp_path / "r.jsonl")] == [8]
    assert summary.read == 20
    _assert_adds_up(summary)


@pytest.mark.parametrize("kind", ["lines", "array"])
def test_fuzzed_files_never_crash_and_always_add_up(tmp_path: Path, kind: str) -> None:
    """Random byte damage (flips, cuts, inserted quotes/braces/newlines/NULs/bad UTF-8) on valid files:
    the reader must not raise, and every line must be accounted for."""
    import random

    rng = random.Random(1234)
    records = [
        {"uid": f"U{i}", "title": f"Title &amp; {i}", "content": 'Words, "quoted", {braces} [x]. ' * (i % 5)}
        for i in range(60)
    ]
    clean = (
        _array_text(records) if kind == "array" else "".join(json.dumps(r) + "\n" for r in records)
    ).encode()
    for trial in range(25):
        data = bytearray(clean)
        for _ in range(rng.randint(1, 12)):
            at = rng.randrange(len(data))
            action = rng.randrange(4)
            if action == 0:
                data[at] = rng.randrange(256)
            elif action == 1:
                del data[at : at + rng.randint(1, 40)]
            else:
                data[at:at] = rng.choice(
                    [b'"', b"{", b"}", b"[", b"]", b",", b"\n", b"\x00", b"\xff\xfe", b"\xc3"]
                )
        path = tmp_path / f"fuzz{trial}.json"
        path.write_bytes(bytes(data))
        rows, summary = read_catalog([path], rejects_path=tmp_path / "r.jsonl")
        _assert_adds_up(summary)
        assert len(rows) == summary.accepted
        assert len(_rejects(tmp_path / "r.jsonl")) == summary.rejected + summary.duplicates
        assert all(r.title and "\x00" not in r.title + r.content for r in rows)


# --------------------------------------------------------------------------- after a JSON array's `]` (issue 12)


def _rows_of(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"uid": f"U{i}", "title": f"Title {i}"}) for i in range(start, start + n)]


def _adds_up_with_trailing(summary: ReadSummary) -> None:
    assert summary.read == summary.accepted + summary.rejected + summary.duplicates + summary.trailing
    summary.check()


def test_two_concatenated_arrays_are_both_read(tmp_path: Path) -> None:
    """The issue: 5 of 10 rows were dropped, exit 0."""
    data = tmp_path / "two.json"
    data.write_text(
        "[\n" + ",\n".join(_rows_of(5)) + "\n]\n[\n" + ",\n".join(_rows_of(5, 5)) + "\n]\n", encoding="utf-8"
    )
    rows, summary = read_catalog([data])
    assert [r.uid for r in rows] == [f"U{i}" for i in range(10)]
    assert [r.line for r in rows[5:]] == [9, 10, 11, 12, 13]  # after the first array: physical lines
    assert summary.read == 10 and summary.trailing == 0
    _adds_up_with_trailing(summary)


def test_array_followed_by_json_lines(tmp_path: Path) -> None:
    data = tmp_path / "mixed.json"
    data.write_text(
        "[" + ", ".join(_rows_of(5)) + "]\n\n" + "\n".join(_rows_of(5, 5)) + "\n", encoding="utf-8"
    )
    rows, summary = read_catalog([data])
    assert [(r.uid, r.line) for r in rows[4:]] == [
        ("U4", 5),
        ("U5", 3),
        ("U6", 4),
        ("U7", 5),
        ("U8", 6),
        ("U9", 7),
    ]
    assert summary.read == 10 and summary.blank_lines == 1
    _adds_up_with_trailing(summary)


def test_json_lines_whose_first_line_is_a_list_keep_their_rows(tmp_path: Path) -> None:
    data = _write_lines(tmp_path / "lines.jsonl", [b'["uid", "title"]'] + [r.encode() for r in _rows_of(4)])
    rows, summary = read_catalog([data], rejects_path=tmp_path / "r.jsonl")
    assert [(r.uid, r.line) for r in rows] == [("U0", 2), ("U1", 3), ("U2", 4), ("U3", 5)]
    assert (summary.read, summary.rejected) == (6, 2)  # the two strings of the list
    assert {r["reason"] for r in _rejects(tmp_path / "r.jsonl")} == {"not a JSON object (got str)"}
    _adds_up_with_trailing(summary)


def test_text_after_the_closing_bracket_is_reported_as_trailing(tmp_path: Path) -> None:
    data = tmp_path / "junk.json"
    data.write_text(
        "["
        + ", ".join(_rows_of(2))
        + "] junk here\n"
        + _rows_of(1, 2)[0]
        + "\n{bad\n["
        + _rows_of(1, 3)[0]
        + "]]\n",
        encoding="utf-8",
    )
    rows, summary = read_catalog([data], rejects_path=tmp_path / "r.jsonl")
    assert [(r.uid, r.line) for r in rows] == [("U0", 1), ("U1", 2), ("U2", 2), ("U3", 4)]
    assert (summary.read, summary.accepted, summary.rejected, summary.trailing) == (7, 4, 1, 2)
    rejects = [(r["line"], r["reason"], r["raw"]) for r in _rejects(tmp_path / "r.jsonl")]
    assert rejects == [
        (1, "trailing data after the closing ']' of a JSON array", "junk here"),
        (3, "invalid JSON (Expecting property name enclosed in double quotes column 2)", "{bad"),
        (4, "trailing data after the closing ']' of a JSON array", "]"),
    ]
    text = summary.summary()
    assert "read 7 = accepted 4 + rejected 1 + duplicates 0 + trailing data 2" in text
    _adds_up_with_trailing(summary)


def test_rows_after_an_array_across_chunks_and_gzip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.catalog

    monkeypatch.setattr(rag.catalog, "_CHUNK_CHARS", 64)  # the `]` and what follows cross chunk boundaries
    text = (
        "["
        + ",".join(_rows_of(50))
        + "]\n"
        + "\n".join(_rows_of(50, 50))
        + "\n["
        + ",\n".join(_rows_of(50, 100))
        + "]"
    )
    for data in (tmp_path / "plain.json", tmp_path / "packed.json.gz"):
        if data.suffix == ".gz":
            with gzip.open(data, "wt", encoding="utf-8") as out:
                out.write(text)
        else:
            data.write_text(text, encoding="utf-8")
        rows, summary = read_catalog([data])
        assert [r.uid for r in rows] == [f"U{i}" for i in range(150)], data
        assert rows[100].line == 52 and rows[149].line == 101
        _adds_up_with_trailing(summary)


def test_keep_last_when_line_numbers_repeat_after_an_array(tmp_path: Path) -> None:
    """Elements of a one-line array share a line number; duplicates must still be told apart."""
    data = tmp_path / "dups.json"
    data.write_text(
        '[{"uid": "A", "title": "first"}]\n[{"uid": "A", "title": "second"}, {"uid": "A", "title": "third"}]\n',
        encoding="utf-8",
    )
    rows, summary = read_catalog([data], config=CatalogConfig(duplicate_policy="keep_last"))
    assert [(r.uid, r.title) for r in rows] == [("A", "third")]
    assert summary.duplicates == 2
    _adds_up_with_trailing(summary)
