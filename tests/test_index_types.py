"""One suite run against every FAISS index type (flat, hnsw, ivf), memory-mapped or not.

.venv/bin/python -m pytest tests/test_index_types.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from index.build import build_index, update_index
from index.embedder import HashingEmbedder
from index.store import IndexStore
from index.testing import hashing_config, product_row, write_catalog, write_rows
from index.vector import FaissIndex, uid_to_id

TYPES = ["flat", "hnsw", "ivf"]


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index_type", TYPES)
def test_add_search_remove_roundtrip(index_type, tmp_path):
    vectors = _unit(600, 32)
    ids = np.array([uid_to_id(f"u{i}") for i in range(600)], dtype=np.int64)
    index = FaissIndex.create(32, index_type, ivf_nlist=8, ivf_train_points=256, hnsw_ef_search=128)
    index.add(ids[:300], vectors[:300])  # ivf trains on the first 256 and keeps going
    index.add(ids[300:], vectors[300:])
    assert index.ntotal == 600
    scores, found = index.search(vectors[:20], 3)
    assert (found[:, 0] == ids[:20]).all() and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert index.remove(ids[:10]) == 10 and index.ntotal == 590
    _, found = index.search(vectors[:10], 5)
    assert not np.isin(found, ids[:10]).any()
    path = tmp_path / "v.faiss"
    index.save(path)
    for mmap in (True, False):
        loaded = FaissIndex.load(path, index_type, 32, index.params, mmap=mmap)
        assert loaded.ntotal == 590
        _, again = loaded.search(vectors[10:30], 1)
        assert (again[:, 0] == ids[10:30]).all()


@pytest.mark.parametrize("index_type", TYPES)
def test_small_ivf_and_empty_index_edge_cases(index_type):
    index = FaissIndex.create(16, index_type, ivf_nlist=1024)
    scores, ids = index.search(_unit(2, 16), 4)
    assert (ids == -1).all() and np.isinf(scores).all()
    index.add(np.arange(5, dtype=np.int64), _unit(5, 16))  # ivf: fewer rows than lists
    _, ids = index.search(_unit(5, 16), 1)
    assert ids.shape == (5, 1) and index.ntotal == 5
    with pytest.raises(ValueError, match="shape"):
        index.add(np.arange(2, dtype=np.int64), _unit(2, 8))
    with pytest.raises(ValueError, match="k must be > 0"):
        index.search(_unit(1, 16), 0)


def test_unknown_type_is_refused():
    with pytest.raises(ValueError, match="index.type"):
        FaissIndex.create(8, "annoy")


@pytest.mark.parametrize("index_type", TYPES)
@pytest.mark.parametrize("mmap", [True, False])
def test_build_update_search_through_the_store(index_type, mmap, tmp_path):
    config = hashing_config(
        tmp_path / "index", index_type=index_type, extra=[f"index.mmap={str(mmap).lower()}"]
    )
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 300)], progress=False)
    update_index(
        config,
        [write_rows(tmp_path / "b.jsonl", [product_row(7, title_variant=3), product_row(999)])],
        ["P0000001"],
        progress=False,
    )
    store = IndexStore.from_config(config)
    snap = store.open_current(mmap=mmap)
    assert snap.rows == 300 and snap.manifest["index"]["type"] == index_type
    embedder = HashingEmbedder(64)
    for uid, title in [
        ("P0000007", product_row(7, title_variant=3)["title"]),
        ("P0000999", product_row(999)["title"]),
        ("P0000042", product_row(42)["title"]),
    ]:
        _, ids = snap.search(embedder.embed([title]), 3)
        assert snap.get_rows(ids[0])[0].uid == uid, (index_type, uid)
    _, ids = snap.search(embedder.embed([product_row(1)["title"]]), 10)
    assert uid_to_id("P0000001") not in ids


def test_search_params_come_from_config_at_open(tmp_path):
    config = hashing_config(tmp_path / "index", index_type="hnsw", extra=["index.hnsw_ef_search=16"])
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 50)], progress=False)
    import faiss

    snap = IndexStore.from_config(config).open_current()
    assert faiss.downcast_index(snap.index.raw.index).hnsw.efSearch == 16
    tuned = hashing_config(tmp_path / "index", index_type="hnsw", extra=["index.hnsw_ef_search=200"])
    snap = IndexStore.from_config(tuned).open_current()
    assert faiss.downcast_index(snap.index.raw.index).hnsw.efSearch == 200  # no rebuild needed to tune


def test_hnsw_recall_at_10_against_exact_search():
    """A regression guard on the approximate index; the MiniLM figures are in docs/index.md."""
    from index.testing import product_row

    embedder = HashingEmbedder(64)
    vectors = embedder.embed([product_row(i)["title"] for i in range(2000)])
    ids = np.arange(2000, dtype=np.int64)
    queries = embedder.embed([f"what is {product_row(i * 13)['title']} about?" for i in range(150)])
    exact = FaissIndex.create(64, "flat")
    exact.add(ids, vectors)
    _, truth = exact.search(queries, 10)
    hnsw = FaissIndex.create(64, "hnsw")
    hnsw.add(ids, vectors)
    recalls = {}
    for ef in (16, 64):
        hnsw.apply_search_params(hnsw_ef_search=ef)
        _, found = hnsw.search(queries, 10)
        recalls[ef] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert recalls[64] >= 0.95 and recalls[64] >= recalls[16] - 0.01, recalls
