"""Embedders: the model-free HashingEmbedder, model resolution and errors, the bundled MiniLM.

.venv/bin/python -m pytest tests/test_embedder.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from index.embedder import EmbedderError, HashingEmbedder, SentenceTransformerEmbedder, load_embedder
from rag.config import load_config
from rag.types import Embedder


def _emb_config(model: str, **extra: object):
    overrides = [f"embedding.model={model}"] + [f"embedding.{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides).embedding


def test_hashing_embedder_is_deterministic_normalised_and_similarity_aware():
    e = HashingEmbedder(128)
    assert isinstance(e, Embedder) and e.name == "hashing-128" and e.dimension == 128
    v = e.embed(["The Hobbit", "the hobbit", "Quantum Field Theory", ""])
    assert v.dtype == np.float32 and v.shape == (4, 128)
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-6)
    assert np.allclose(v[3], 0.0)  # empty text: the zero vector, never NaN
    assert np.array_equal(v[0], v[1])  # case-insensitive
    assert float(v[0] @ v[2]) < 0.5
    assert np.array_equal(HashingEmbedder(128).embed(["The Hobbit"])[0], v[0])  # stable across instances
    assert e.embed([]).shape == (0, 128)


def test_embed_query_cache_returns_read_only_shared_vectors():
    e = HashingEmbedder(32, cache_size=2)
    a = e.embed_query("alpha")
    assert e.embed_query("alpha") is a and not a.flags.writeable
    e.embed_query("beta")
    e.embed_query("gamma")  # evicts alpha (LRU of 2)
    assert e.embed_query("alpha") is not a
    assert np.array_equal(e.embed_query("alpha"), a)
    no_cache = HashingEmbedder(32, cache_size=0)
    assert no_cache.embed_query("x") is not no_cache.embed_query("x")


@pytest.mark.parametrize("spec,dim", [("hashing:32", 32), ("hashing-16", 16), ("hashing", 64)])
def test_load_embedder_hashing_specs(spec, dim):
    e = load_embedder(_emb_config(spec))
    assert isinstance(e, HashingEmbedder) and e.dimension == dim


def test_unknown_bundled_model_is_explained():
    with pytest.raises(EmbedderError, match="only bundled model is 'bundled:all-MiniLM-L6-v2'"):
        load_embedder(_emb_config("bundled:bert-large"))


def test_missing_local_directory_is_explained(tmp_path):
    with pytest.raises(EmbedderError, match="does not exist"):
        load_embedder(_emb_config(str(tmp_path / "no-model")))


def test_missing_hub_weights_offline_are_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderError) as info:
        load_embedder(_emb_config("example-org/not-a-real-embedding-model"))
    message = str(info.value)
    assert "example-org/not-a-real-embedding-model" in message and "HF_HUB_OFFLINE" in message
    assert "local model directory" in message


# --------------------------------------------------------------------------- the bundled MiniLM


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    """One MiniLM for the whole module (loading takes ~2 s)."""
    return load_embedder(load_config(None, ["embedding.backend=torch"]).embedding)  # type: ignore[return-value]


@pytest.mark.integration
def test_bundled_minilm_embeds_titles(minilm):
    assert isinstance(minilm, SentenceTransformerEmbedder) and isinstance(minilm, Embedder)
    assert minilm.name == "bundled:all-MiniLM-L6-v2" and minilm.dimension == 384
    assert minilm.model.max_seq_length == 64
    v = minilm.embed(
        [
            "A field guide to North American birds",
            "Birds of North America: identification handbook",
            "Stainless steel kitchen knife set",
        ],
        batch_size=2,
    )
    assert v.dtype == np.float32 and v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
    q = minilm.embed_query("a book to identify birds")
    assert q.shape == (384,) and minilm.embed_query("a book to identify birds") is q


@pytest.mark.integration
def test_minilm_index_answers_a_question_with_the_right_row(minilm, tmp_path):
    from index.build import build_index
    from index.store import IndexStore
    from index.testing import write_rows

    rows = [
        {"uid": "b1", "title": "Birds of the Rocky Mountains: A Field Guide", "content": ""},
        {"uid": "k1", "title": "Professional Chef Knife Set, 8 Pieces", "content": ""},
        {"uid": "g1", "title": "Beginner's Guide to Vegetable Gardening", "content": ""},
        {"uid": "t1", "title": "Wooden Train Set for Toddlers", "content": ""},
    ]
    config = load_config(None, [f"index.path={tmp_path / 'index'}", "index.descriptions=false"])
    build_index(config, [write_rows(tmp_path / "c.jsonl", rows)], progress=False, embedder=minilm)
    snap = IndexStore.from_config(config).open_current()
    assert snap.embedding_model == minilm.name
    for question, uid in [
        ("which book helps me identify mountain birds?", "b1"),
        ("I need knives for my kitchen", "k1"),
        ("toy train for a two year old", "t1"),
    ]:
        _, ids = snap.search(minilm.embed_query(question), 1)
        assert snap.get_rows(ids[0])[0].uid == uid, question
