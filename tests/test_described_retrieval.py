"""Finding products from what users remember: title index fused with the description index.

    .venv/bin/python -m pytest tests/test_described_retrieval.py -q

A small hand-written catalog; the title path is the real MiniLM over the titles, the description
path the real BM25 index (index/lexical.py) built in tmp_path. Questions describe a product
without naming it, in English and in Portuguese.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from index.lexical import LexicalIndex, build_artifacts
from index.metadata import META_FILE, content_hash, open_for_writing
from rag.config import Config
from rag.retrieval import Retriever
from rag.types import CatalogRow
from tests.helpers import ArraySnapshot, StaticLive

CATALOG = [
    CatalogRow(
        "D01",
        "Happy Trails: The Story of Roy Rogers and Dale Evans",
        "The life of the King of the Cowboys. Roy Rogers sang with the Sons of the Pioneers, starred in "
        "westerns and rode his golden palomino Trigger, the smartest horse in the movies.",
    ),
    CatalogRow(
        "D02",
        "City of Djinns: A Year in Delhi",
        "A travel memoir by William Dalrymple about the year he spent living in Delhi, where the djinns, "
        "the spirits of Islamic legend, are said to haunt the ruins of the old city.",
    ),
    CatalogRow(
        "D03",
        "Seven Sleepy Kittens",
        "Seven kittens on a farm cannot fall asleep, so each one counts something different: stars, "
        "sheep, raindrops and buttons. A bedtime picture book for ages 2 to 5.",
    ),
    CatalogRow(
        "D04",
        "The Copper Pot Kitchen",
        "A cookbook of 120 recipes from a Cornish farmhouse, grouped by season: saffron buns, crab soup "
        "and a blackberry and apple crumble.",
    ),
    CatalogRow(
        "D05",
        "Midnight at the Observatory (DVD)",
        "A documentary that follows astronomers of a mountain observatory in the Atacama Desert through "
        "one winter as they search for a comet first seen in 1861.",
    ),
    CatalogRow(
        "D06",
        "Harbour Lights [Audio CD]",
        "The third album of a folk trio of sisters, recorded live in a church in Galway with fiddle, "
        "concertina and three-part harmony.",
    ),
    CatalogRow(
        "D07",
        "Tumbletree Rainbow Stacking Tower",
        "Twelve rings of solid beech, painted with water-based colours, that stack on a rocking base. "
        "Made in Slovenia. For ages 18 months and up.",
    ),
    CatalogRow(
        "D08",
        "The Other Boleyn Girl",
        "Two sisters compete for the favour of King Henry VIII at the Tudor court, and one of them "
        "becomes queen.",
    ),
    CatalogRow("D09", "Stainless Steel Garlic Press", ""),
    CatalogRow(
        "D10",
        "Cowboy Boots for Men, Brown Leather",
        "Classic western boots in brown leather with a riding heel. True to size.",
    ),
    CatalogRow(
        "D11",
        "Learn Python the Hard Way",
        "A programming book for beginners that teaches Python with exercises.",
    ),
    CatalogRow(
        "D12",
        "The Horse Whisperer",
        "A novel about a trainer who heals a traumatised horse and the girl who rode it.",
    ),
]

DESCRIBED = [
    ("a book about a singing cowboy and his horse Trigger", "D01"),
    ("um livro sobre um cowboy cantor e seu cavalo Trigger", "D01"),
    ("travel memoir about a year living in Delhi with spirits haunting the ruins", "D02"),
    ("bedtime book where kittens count sheep and raindrops to fall asleep", "D03"),
    ("livro infantil de gatinhos que contam estrelas e ovelhas para dormir", "D03"),
    ("cookbook with saffron buns and crab soup from Cornwall", "D04"),
    ("documentary about astronomers looking for a comet in the Atacama desert", "D05"),
    ("documentario sobre astronomos procurando um cometa no deserto", "D05"),
    ("folk album recorded live in a church in Galway", "D06"),
    ("wooden beech rings stacking toy made in Slovenia", "D07"),
    ("two sisters competing for Henry VIII at court", "D08"),
]

NAMED = [
    ("who wrote City of Djinns?", "D02"),
    ("Seven Sleepy Kittens", "D03"),
    ("do que se trata o livro The Other Boleyn Girl?", "D08"),
    ("garlic press", "D09"),
    ("cowboy boots", "D10"),
    ("the horse whisperer", "D12"),
]


class DescribedSnapshot(ArraySnapshot):
    """ArraySnapshot (ids = row positions) with the real description index of the same rows."""

    def __init__(self, rows: Sequence[CatalogRow], vectors: Any, lexical_dir: Path) -> None:
        super().__init__(rows, vectors)
        self.lexical = LexicalIndex(lexical_dir)

    def lexical_search(self, question: str, k: int) -> list[tuple[int, float, str]]:
        return self.lexical.search(question, k, get_rows=self.get_rows)


@pytest.fixture(scope="module")
def snapshot(minilm: Any, tmp_path_factory: pytest.TempPathFactory) -> DescribedSnapshot:
    version = tmp_path_factory.mktemp("version")
    conn = open_for_writing(version / META_FILE)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO rows (faiss_id, uid, title, content, content_hash, source, line) VALUES (?,?,?,?,?,?,?)",
        [
            (i, r.uid, r.title, r.content, content_hash(r.title, r.content), None, None)
            for i, r in enumerate(CATALOG)
        ],
    )
    conn.execute("COMMIT")
    conn.close()
    build_artifacts(version / META_FILE, version)
    return DescribedSnapshot(CATALOG, minilm.embed([r.title for r in CATALOG]), version)


def retriever(minilm: Any, snapshot: DescribedSnapshot, **retrieval: Any) -> Retriever:
    config = Config()
    for key, value in retrieval.items():
        setattr(config.retrieval, key, value)
    return Retriever(config, StaticLive(snapshot), minilm)


def rank(r: Retriever, question: str, uid: str, k: int = 5) -> int | None:
    uids = [h.row.uid for h in r.search(question, k=k)]
    return uids.index(uid) + 1 if uid in uids else None


@pytest.mark.parametrize("question, uid", DESCRIBED)
def test_described_questions_find_their_product(
    minilm: Any, snapshot: DescribedSnapshot, question: str, uid: str
) -> None:
    fused = retriever(minilm, snapshot)
    hits = fused.search(question, k=3)
    assert hits[0].row.uid == uid, [(h.row.uid, round(h.score, 3)) for h in hits]
    assert hits[0].snippet and hits[0].snippet in hits[0].row.content  # the passage that matched, verbatim
    assert "lexical" in fused.last_timings


@pytest.mark.parametrize("question, uid", NAMED)
def test_named_questions_still_rank_first_with_descriptions_on(
    minilm: Any, snapshot: DescribedSnapshot, question: str, uid: str
) -> None:
    for fusion in ("weighted", "rrf"):
        assert rank(retriever(minilm, snapshot, fusion=fusion), question, uid) == 1, (fusion, question)


def test_switching_descriptions_off_uses_the_title_index_alone(
    minilm: Any, snapshot: DescribedSnapshot
) -> None:
    off = retriever(minilm, snapshot, use_descriptions=False)
    on = retriever(minilm, snapshot)
    ranks_off = [rank(off, q, uid, k=1) for q, uid in DESCRIBED]
    ranks_on = [rank(on, q, uid, k=1) for q, uid in DESCRIBED]
    assert ranks_on.count(1) == len(DESCRIBED)
    assert ranks_off.count(1) < len(DESCRIBED) - 3  # titles alone cannot answer most of them
    hits = off.search(DESCRIBED[0][0], k=3)
    assert "lexical" not in off.last_timings and all(h.snippet == "" for h in hits)


def test_rrf_fusion_also_finds_described_products(minilm: Any, snapshot: DescribedSnapshot) -> None:
    rrf = retriever(minilm, snapshot, fusion="rrf")
    found = sum(rank(rrf, q, uid) is not None for q, uid in DESCRIBED)
    assert found >= len(DESCRIBED) - 1


def test_a_failing_description_index_never_fails_the_query(
    minilm: Any, snapshot: DescribedSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(question: str, k: int) -> list[tuple[int, float, str]]:
        raise OSError("disk went away")

    monkeypatch.setattr(snapshot, "lexical_search", broken)
    assert retriever(minilm, snapshot).search("who wrote City of Djinns?", k=1)[0].row.uid == "D02"
