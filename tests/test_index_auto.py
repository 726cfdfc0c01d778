"""`index.type: auto`: flat below `index.auto_ivf_min_rows`, else ivf with nlist from the row count
and the smallest nprobe whose recall@10 against exact search reaches `index.auto_recall_target`.

.venv/bin/python -m pytest tests/test_index_auto.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from index.autoindex import (
    auto_nlist,
    exact_top_k,
    lower_bound,
    per_query_recall,
    recall_at_k,
    tune_nprobe,
)
from index.build import build_index, compact_index, update_index
from index.embedder import HashingEmbedder
from index.store import IndexStore
from index.testing import hashing_config, product_row, write_catalog
from rag.config import ConfigError, load_config


def _auto(tmp_path: Path, *extra: str):
    return hashing_config(tmp_path / "index", index_type="auto", extra=list(extra))


def test_auto_is_the_default_and_is_validated() -> None:
    assert load_config().index.type == "auto"
    assert load_config().index.ivf_nprobe is None
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            ["index.auto_recall_target=1.5", "index.auto_tune_queries=0", "index.auto_ivf_min_rows=-1"],
        )
    joined = "\n".join(info.value.errors)
    assert "index.auto_recall_target: must be in (0, 1], got 1.5" in joined
    assert "index.auto_tune_queries: must be >= 1, got 0" in joined
    assert "index.auto_ivf_min_rows: must be >= 0, got -1" in joined


def test_auto_nlist_follows_the_row_count_within_bounds() -> None:
    assert auto_nlist(1_300_000) == 4096  # 4 * sqrt = 4,561, capped
    assert auto_nlist(100_000) == round(4 * 100_000**0.5) == 1265
    assert auto_nlist(20_000) == 512  # 4 * sqrt = 566, but at most rows / 39 points per list
    assert auto_nlist(2_000) == 51  # 4 * sqrt = 179, but at most rows / 39 points per list
    assert auto_nlist(100) == 2


def test_small_catalog_stays_exact(tmp_path: Path) -> None:
    config = _auto(tmp_path)
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 300)], progress=False)
    manifest = IndexStore.from_config(config).manifest()
    assert manifest["index"]["type"] == "flat"
    assert manifest["index"]["auto"] == {
        "rows": 300,
        "ivf_min_rows": 20_000,
        "chosen": "flat",
        "recall_at_10": 1.0,
    }


def test_large_catalog_gets_a_tuned_ivf_that_updates_keep(tmp_path: Path) -> None:
    config = _auto(tmp_path, "index.auto_ivf_min_rows=1000", "index.auto_tune_queries=120")
    report = build_index(config, [write_catalog(tmp_path / "a.jsonl", 3000)], progress=False)
    assert report.index_type == "ivf"
    store = IndexStore.from_config(config)
    info = store.manifest()["index"]
    auto = info["auto"]
    assert (info["type"], auto["chosen"], auto["rows"], auto["nlist"]) == (
        "ivf",
        "ivf",
        3000,
        (3000 - 120) // 39,  # auto_nlist(3000) = 76, but 120 rows are held back from training
    )
    target = auto["recall_target"]
    assert target == 0.98 and auto["recall_at_10"] >= target and auto["queries"] == 120
    assert (
        info["params"]["ivf_nprobe"] == auto["nprobe"] and info["params"]["ivf_nlist_used"] == auto["nlist"]
    )
    nprobe = auto["nprobe"]
    mean, lower = auto["tried"][str(nprobe)]
    assert (mean, lower) == (auto["recall_at_10"], auto["recall_at_10_lower"]) and mean >= lower >= target
    if nprobe > 1:  # the smallest: one fewer list misses the target (by its lower bound)
        assert auto["tried"][str(nprobe - 1)][1] < target
    assert auto["train_points"] <= 3000 - 120  # the tuning rows are held back from training

    snap = store.open_current()
    assert snap.index.raw.nprobe == nprobe  # served with the tuned value (index.ivf_nprobe unset)
    query = HashingEmbedder(64).embed([product_row(7)["title"]])
    _scores, ids = snap.search(query, 3)
    assert snap.get_rows(ids[0][:1])[0].uid == "P0000007"
    override = IndexStore.from_config(
        load_config(None, [f"index.path={config.index.path}", "index.ivf_nprobe=3"])
    )
    assert override.open_current().index.raw.nprobe == 3

    update_index(config, [write_catalog(tmp_path / "b.jsonl", 20, start=5000)], ["P0000001"], progress=False)
    assert store.manifest()["index"] == info  # a delta keeps the parent's choice
    compact_index(config, force=True)
    compacted = store.manifest()["index"]
    assert compacted["type"] == "ivf" and compacted["auto"] == auto
    assert compacted["params"]["ivf_nprobe"] == nprobe
    snap = store.open_current()
    assert snap.rows == 3019 and snap.index.raw.nprobe == nprobe


def test_exact_top_k_is_the_flat_search(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    import index.autoindex as autoindex

    monkeypatch.setattr(autoindex, "TRUTH_BLOCK", 64)  # several blocks, the last one partial
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    ids = rng.permutation(10**6)[:1000].astype(np.int64)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(16))
    flat.add_with_ids(vectors, ids)
    want_scores, want_ids = flat.search(queries, 10)
    scores, got_ids = exact_top_k(ids, vectors, queries, 10)
    assert np.allclose(scores, want_scores, atol=1e-4) and np.array_equal(got_ids, want_ids)
    assert recall_at_k(want_scores, want_ids, (scores, got_ids)) == 1.0


def test_lower_bound_is_the_mean_less_two_standard_errors() -> None:
    recalls = np.array([1.0] * 90 + [0.9] * 10)
    assert lower_bound(recalls) == pytest.approx(0.99 - 1.96 * recalls.std(ddof=1) / 10)
    assert lower_bound(np.ones(300)) == 1.0


def test_tune_nprobe_finds_the_smallest_value_reaching_the_target() -> None:
    import faiss

    rng = np.random.default_rng(0)
    data = rng.normal(size=(4000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:200] + rng.normal(scale=0.2, size=(200, 16)).astype(np.float32)
    exact = faiss.IndexFlatIP(16)
    exact.add(data)
    truth = exact.search(queries, 10)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 64, faiss.METRIC_INNER_PRODUCT)
    ivf.train(data)
    ivf.add(data)

    def recall(nprobe: int) -> tuple[float, float]:
        ivf.nprobe = nprobe
        recalls = per_query_recall(*ivf.search(queries, 10), truth)
        return float(recalls.mean()), lower_bound(recalls)

    for target in (0.5, 0.9, 0.97, 1.0):
        chosen, tried = tune_nprobe(ivf, queries, truth, target)
        assert tried[chosen] == recall(chosen) and recall(chosen)[1] >= target
        assert chosen == 1 or recall(chosen - 1)[1] < target
    assert recall_at_k(*exact.search(queries, 10), truth) == 1.0


def test_the_device_path_builds_a_complete_tuned_ivf_with_the_exact_truth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GPU version of the conversion (torch k-means, assignment, add_core, exact top-k in one
    pass), run here on torch's CPU device: every row lands in its nearest list, the exact top-k is
    the flat search, and the tuned nprobe reaches the target on the index it serves."""
    import faiss
    import torch

    import index.autoindex as autoindex
    from index.vector import FaissIndex

    monkeypatch.setattr(autoindex, "ASSIGN_BLOCK", 700)  # several blocks, the last one partial
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 24)).astype(np.float32)
    data = centres[rng.integers(0, 40, 6000)] + rng.normal(scale=0.3, size=(6000, 24)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = rng.permutation(10**7)[:6000].astype(np.int64)
    flat = FaissIndex.create(24, "flat")
    flat.add(ids, data)
    by_id = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    config = load_config(None, ["index.auto_ivf_min_rows=1000", "index.auto_tune_queries=150"]).index
    seen: list[np.ndarray] = []

    def embed(texts: list[str]) -> np.ndarray:  # a query near each held-back row
        rows = data[[int(re.search(r"id (\d+)", t).group(1)) for t in texts]]  # type: ignore[union-attr]
        out = rows + rng.normal(scale=0.05, size=rows.shape).astype(np.float32)
        seen.append(out)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def titles_of(wanted):
        return [f"id {by_id[i]} id" for i in wanted]

    chosen, record = autoindex.finish_auto_index(flat, config, embed, titles_of, device=torch.device("cpu"))
    ivf = chosen.raw
    assert record["chosen"] == "ivf" and record["device"] == "cpu" and ivf.ntotal == 6000
    assert record["recall_at_10_lower"] >= 0.98 and chosen.params["ivf_nprobe"] == record["nprobe"]
    # every row is stored once, in the list of its highest-scoring centroid
    quantizer = faiss.downcast_index(ivf.quantizer)
    centroids = faiss.rev_swig_ptr(quantizer.get_xb(), ivf.nlist * 24).reshape(ivf.nlist, 24)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    nearest = (data @ centroids.T).argmax(axis=1)
    invlists = ivf.invlists
    stored = {}
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            for fid in faiss.rev_swig_ptr(invlists.get_ids(lst), size).tolist():
                stored[fid] = lst
    assert len(stored) == 6000
    assert all(stored[int(fid)] == nearest[row] for row, fid in enumerate(ids))
    # at nprobe = nlist the IVF is exact; the recall measured for the chosen nprobe is the served one
    exact = faiss.IndexIDMap(faiss.IndexFlatIP(24))
    exact.add_with_ids(data, ids)
    queries = seen[0] / np.linalg.norm(seen[0], axis=1, keepdims=True)
    truth = exact.search(queries, 10)
    ivf.nprobe = record["nprobe"]
    assert recall_at_k(*ivf.search(queries, 10), truth) == pytest.approx(record["recall_at_10"], abs=1e-4)
    ivf.nprobe = ivf.nlist
    assert recall_at_k(*ivf.search(queries, 10), truth) == 1.0
