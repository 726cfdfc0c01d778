"""The synthetic catalog generator (rag/synthetic.py): determinism, shape, lengths, dirt to clean.

.venv/bin/python -m pytest tests/test_synthetic.py -q
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import statistics
from pathlib import Path

import pytest

from rag.catalog import read_catalog
from rag.cleaning import clean_text, clean_title
from rag.synthetic import ANCHOR_PRODUCTS, ANCHOR_QUESTIONS, generate_records, write_synthetic_catalog

ROWS = 20_000


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return list(generate_records(ROWS, seed=3))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_synthetic_catalog(tmp_path / "a" / "cat.jsonl", rows=1000, seed=7)
    b = write_synthetic_catalog(tmp_path / "b" / "cat.jsonl", rows=1000, seed=7)
    c = write_synthetic_catalog(tmp_path / "c.jsonl", rows=1000, seed=8)
    assert _sha(a) == _sha(b) != _sha(c)
    gz1 = write_synthetic_catalog(tmp_path / "one.jsonl.gz", rows=1000, seed=7)
    gz2 = write_synthetic_catalog(tmp_path / "two" / "other.jsonl.gz", rows=1000, seed=7)
    assert _sha(gz1) == _sha(gz2)  # no timestamp or file name in the gzip header
    assert gzip.decompress(gz1.read_bytes()) == a.read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))


def test_prefix_property_and_row_count(tmp_path: Path) -> None:
    short = list(generate_records(500, seed=1))
    long = list(generate_records(800, seed=1))
    assert len(short) == 500 and long[:500] == short
    assert list(generate_records(3)) == [dict(a) for a in ANCHOR_PRODUCTS[:3]]
    assert list(generate_records(0)) == []
    path = write_synthetic_catalog(tmp_path / "x.jsonl", rows=123)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 123


def test_records_have_the_trn_json_shape(records: list[dict]) -> None:
    for record in records[:2000]:
        assert set(record) == {"uid", "title", "content", "target_ind", "target_rel"}
        assert re.fullmatch(r"[0-9A-Z]{10}", record["uid"]), record["uid"]
        assert isinstance(record["content"], str) and record["title"]
        assert len(record["target_ind"]) == len(record["target_rel"])
    assert len({r["uid"] for r in records}) == len(records)


def test_anchors_come_first_and_answer_their_questions(records: list[dict]) -> None:
    assert records[: len(ANCHOR_PRODUCTS)] == ANCHOR_PRODUCTS
    titles = [a["title"] for a in ANCHOR_PRODUCTS]
    assert "The Lighthouse Keeper's Daughter" in titles and len(ANCHOR_PRODUCTS) >= 7
    by_uid = {a["uid"]: a for a in ANCHOR_PRODUCTS}
    for question, uid, phrase in ANCHOR_QUESTIONS:
        assert phrase in clean_text(by_uid[uid]["content"]), question
    generated_titles = {r["title"] for r in records[len(ANCHOR_PRODUCTS) :]}
    assert not generated_titles & set(titles)  # anchors stay unambiguous


def _quantiles(values: list[int]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100)
    return q[24], q[49], q[74]


def test_length_distributions_match_the_real_data(records: list[dict]) -> None:
    titles = [len(r["title"]) for r in records]
    contents = [len(r["content"]) for r in records if r["content"]]
    for (p25, p50, p75), real in (
        (_quantiles(titles), (37, 54, 75)),
        (_quantiles(contents), (194, 398, 805)),
    ):
        for measured, expected in zip((p25, p50, p75), real, strict=True):
            assert abs(measured - expected) <= 0.25 * expected, (measured, expected)
    empty_share = 1 - len(contents) / len(records)
    assert 0.36 <= empty_share <= 0.44
    assert max(contents) > 4000  # a long tail
    q = statistics.quantiles(titles, n=20)
    assert 12 <= q[0] <= 22 and 105 <= q[-1] <= 150  # central 90% near 17-125


def test_entities_boilerplate_and_near_duplicates_present(records: list[dict]) -> None:
    contents = [r["content"] for r in records if r["content"]]
    joined = "\n".join(contents)
    for entity in ("&#8217;", "&#x2019;", "&mdash;", "&amp;", "&amp;#8217;"):
        assert entity in joined, entity
    assert any("&amp;" in r["title"] or "&#39;" in r["title"] for r in records)
    for notice in (
        "--This text refers to an out of print or unavailable edition of this title.",
        "--This text refers to thePaperbackedition.",
        "--This text refers to theHardcoveredition.",
        "Reed Business Information, Inc.",
        "Cahners Business Information",
        "Reed Elsevier Inc. All rights reserved.",
        "American Library Association",
        "AudioFile",
        "Starred Review.",
        "[Signature]Reviewed by",
    ):
        assert notice in joined, notice
    titles = [r["title"] for r in records]
    assert sum(bool(re.search(r", Vol\. \d+$", t)) for t in titles) > 100
    assert (
        sum(
            bool(
                re.search(
                    r"\((?:Blue|Red|Green|Black|White|Navy|Grey|Pink|Yellow|Purple|Orange|Teal), "
                    r"(?:Small|Medium|Large|X-Large|XX-Large)\)$",
                    t,
                )
            )
            for t in titles
        )
        > 50
    )
    assert re.search(r"\bby [A-Z][a-z]+ [A-Z][a-z]+\.", joined) and " is the author of " in joined
    for kind_marker in ("[Audio CD]", "(DVD)", "Skillet", "Train Set"):
        assert any(kind_marker in t for t in titles), kind_marker


def test_cleaning_removes_what_the_generator_adds(records: list[dict]) -> None:
    leftovers = re.compile(
        r"&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);|This text refers|Business Information|Library Association"
        r"|AudioFile|Starred Review|\[Signature\]|All rights reserved"
    )
    kept_ordinary = 0
    for record in records:
        content = clean_text(record["content"])
        assert not leftovers.search(content), content
        assert not leftovers.search(clean_title(record["title"]))
        kept_ordinary += "This revised edition adds" in content or "holds the copyright to" in content
    assert kept_ordinary > 100  # ordinary sentences about editions and copyright survive


def test_reads_back_through_the_catalog_reader(tmp_path: Path) -> None:
    path = write_synthetic_catalog(tmp_path / "cat.jsonl.gz", rows=3000, seed=5)
    rows, summary = read_catalog([path])
    assert summary.read == summary.accepted == 3000 and summary.rejected == summary.duplicates == 0
    assert 0.35 <= summary.empty_content / 3000 <= 0.45
    lighthouse = next(r for r in rows if r.title == "The Lighthouse Keeper's Daughter")
    assert "Eleanor Whitcombe" in lighthouse.content and "Keeper\u2019s" in lighthouse.content


def test_rejects_negative_rows() -> None:
    with pytest.raises(ValueError, match="rows"):
        list(generate_records(-1))


def test_cli_synth(tmp_path: Path) -> None:
    from rag.cli import main

    out = tmp_path / "deep" / "synthetic.jsonl"
    assert main(["synth", "--rows", "50", "--out", str(out)]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 50
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["title"] == ANCHOR_PRODUCTS[0]["title"]
