"""Embedding backends (torch vs onnx) and the HNSW search settings.

    .venv/bin/python -m pytest tests/test_embedder_backends.py -q

The onnx test exports the bundled all-MiniLM-L6-v2 into tmp_path (~12 s on 2 cores; the fp32 export
runs under `-m slow`); it is skipped only when onnxruntime is not installed (`pip install .[fast]`).
"""

from __future__ import annotations

import builtins
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from index.embedder import EmbedderError, load_embedder
from rag.config import load_config

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnx not installed (pip install .[fast])")

TITLES = [
    "The Hobbit",
    "City of Djinns: A Year in Delhi",
    "Tumbletree Wooden Rainbow Stacking Tower (12 Pieces)",
    "The Copper Pot Kitchen: 120 Recipes from a Cornish Farmhouse",
    "who wrote the lighthouse keeper's daughter?",
    "",
]


def _config(tmp_path: Path, **extra: object):
    overrides = [f"embedding.onnx_cache_dir={tmp_path / 'onnx'}"] + [
        f"embedding.{k}={v}" for k, v in extra.items()
    ]
    return load_config(None, overrides).embedding


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return load_embedder(load_config(None, ["embedding.backend=torch"]).embedding).embed(TITLES)


@pytest.mark.integration
@needs_ort
@pytest.mark.parametrize(
    "quantize,min_cosine",
    [
        ("int8", 0.97),  # the default of backend onnx
        pytest.param("none", 0.9999, marks=pytest.mark.slow),  # a second export: another ~15 s
    ],
)
def test_onnx_backend_matches_torch(tmp_path, torch_vectors, quantize, min_cosine):
    embedder = load_embedder(_config(tmp_path, backend="onnx", onnx_quantize=quantize, batch_size=4))
    vectors = embedder.embed(TITLES)  # batch_size 4 < 6 titles: sorting by length and two batches
    assert vectors.shape == (len(TITLES), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * torch_vectors).sum(axis=1)
    assert cosines.min() > min_cosine, cosines
    # a text's vector barely depends on its batch: padding is masked out, but int8 activations are
    # quantised with one scale per batch tensor, so the batch moves them a little
    alone = np.stack([embedder.embed([t])[0] for t in TITLES])
    assert ((alone * vectors).sum(axis=1) > (0.95 if quantize == "int8" else 0.99999)).all()
    assert np.array_equal(embedder.embed_query(TITLES[1]), alone[1])
    # a single text runs on a one-thread session, more than one on the all-cores bulk session: same vectors
    bulk = embedder.bulk_session()
    assert bulk is not embedder.session and embedder.session.get_session_options().intra_op_num_threads == 1
    for title in TITLES:
        encoding = [embedder.tokenizer.encode(title)]
        assert np.array_equal(embedder._run(encoding), embedder._run(encoding, bulk)), title
    pinned = load_embedder(_config(tmp_path, backend="onnx", onnx_quantize=quantize, num_threads=2))
    assert pinned.bulk_session() is pinned.session  # embedding.num_threads set: one session, as asked
    # nearest neighbours agree with torch: each title is closest to itself
    assert (np.argmax(vectors[:5] @ torch_vectors[:5].T, axis=1) == np.arange(5)).all()
    # the export is cached: a second load reuses the directory (no new one appears)
    exported = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert len(exported) == 1 and (tmp_path / "onnx" / exported[0] / "model.onnx").is_file()
    load_embedder(_config(tmp_path, backend="onnx", onnx_quantize=quantize))
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == exported


def test_onnx_backend_missing_says_how_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(EmbedderError, match=r"pip install \.\[fast\]") as info:
        load_embedder(_config(tmp_path, backend="onnx"))
    assert "embedding.backend" in str(info.value)
    assert not (tmp_path / "onnx").exists()  # nothing half-exported


def test_onnx_backend_config_is_validated():
    from rag.config import ConfigError

    with pytest.raises(ConfigError, match="embedding.onnx_quantize"):
        load_config(None, ["embedding.onnx_quantize=int4"])


def test_hnsw_ef_search_is_applied_and_overridable(tmp_path):
    import faiss

    from index.vector import FaissIndex

    config = load_config(None, ["index.type=hnsw", "index.hnsw_ef_search=123", "index.hnsw_m=16"]).index
    index = FaissIndex.from_config(8, config)
    inner = faiss.downcast_index(index.raw.index)
    assert inner.hnsw.efSearch == 123 and index.params["hnsw_m"] == 16
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.add(np.arange(200), vectors)
    index.save(tmp_path / "h.faiss")
    loaded = FaissIndex.load(tmp_path / "h.faiss", "hnsw", 8, index.params)
    assert faiss.downcast_index(loaded.raw.index).hnsw.efSearch == 123  # from the stored params
    loaded.apply_search_params(hnsw_ef_search=77)  # open-time override, no rebuild
    assert faiss.downcast_index(loaded.raw.index).hnsw.efSearch == 77
    _scores, ids = loaded.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"pooling_mode_mean_tokens": True}, "mean"),  # sentence-transformers < 5
        ({"pooling_mode_cls_token": True}, "cls"),
        ({"pooling_mode": "mean"}, "mean"),  # sentence-transformers 5 (`model.save()` writes this)
        ({"pooling_mode": "cls"}, "cls"),
    ],
)
def test_onnx_reads_both_pooling_config_forms(tmp_path: Path, pooling: dict, expected: str) -> None:
    import json

    from index.onnx_embedder import pooling_mode

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert pooling_mode(tmp_path) == (expected, True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(ValueError, match="only mean or CLS pooling"):
        pooling_mode(tmp_path)


def test_onnx_batches_are_bounded_by_padded_tokens() -> None:
    """Sorted lengths are cut where a batch would pass max_tokens padded word pieces or max_texts texts."""
    from index.onnx_embedder import token_batches

    lengths = [3, 3, 4, 10, 10, 20, 64, 64]
    batches = token_batches(lengths, max_texts=4, max_tokens=40)
    assert [lengths[b] for b in batches] == [[3, 3, 4, 10], [10, 20], [64], [64]]
    for b in batches:  # a text longer than the budget still gets a batch of its own
        part = lengths[b]
        assert len(part) == 1 or (len(part) <= 4 and len(part) * max(part) <= 40)
    assert token_batches([], 4, 40) == []
    assert token_batches([5] * 9, max_texts=4, max_tokens=10**6) == [slice(0, 4), slice(4, 8), slice(8, 9)]
