"""The bulk build path: the bulk embedder (CPU fp32 here, CUDA fp16 under @gpu), the parallel cleaning
processes, the parallel BM25 build and the build's stage times."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index import lexical
from index.build import STAGE_NAMES, _record, _records, build_index
from index.embedder import HashingEmbedder, load_embedder
from index.metadata import content_hash, open_for_writing
from index.store import IndexStore, read_manifest
from index.vector import uid_to_id
from rag.catalog import CatalogReader
from rag.config import CatalogConfig, load_config
from rag.synthetic import generate_records
from rag.types import CatalogRow

# titles that probe truncation, empty input, accents, other scripts, markup-like text and repeats
EDGE_TITLES = [
    "",
    "a",
    "The Hobbit",
    "The Hobbit",
    "Ação e reação: o guia prático",
    "日本語のタイトル 第二版",
    "word " * 300,
    "<b>bold</b> & 'quotes' — dashes",
    "Harry Potter and the Philosopher's Stone (Book 1)",
]


def _titles(n: int, seed: int = 3) -> list[str]:
    rows = list(generate_records(n, seed=seed))
    return [r["title"] for r in rows]


@pytest.fixture(scope="module")
def pair():
    """The reference (SentenceTransformer.encode) and the bulk embedder on CPU, fp32."""
    # the torch backend on both sides (the CPU default is onnx int8)
    ref = load_embedder(load_config(overrides=["embedding.backend=torch", "embedding.bulk=false"]).embedding)
    bulk = load_embedder(
        load_config(
            overrides=["embedding.backend=torch", "embedding.bulk=true", "embedding.bulk_batch_tokens=600"]
        ).embedding
    )
    return ref, bulk


@pytest.mark.integration
def test_bulk_embedder_on_cpu_matches_sentence_transformers(pair):
    ref, bulk = pair
    from index.bulk_embedder import BulkEmbedder

    assert isinstance(bulk, BulkEmbedder) and not bulk.half and bulk.dimension == ref.dimension
    titles = EDGE_TITLES + _titles(120)
    random.Random(1).shuffle(titles)
    bulk.chunk_rows = 97  # several chunks: the producer thread and the scatter back to input order
    got = bulk.embed(titles)
    want = ref.embed(titles)
    assert got.shape == want.shape == (len(titles), ref.dimension) and got.dtype == np.float32
    cosine = (got * want).sum(axis=1)
    assert cosine.min() >= 0.9999, (cosine.argmin(), titles[int(cosine.argmin())])
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # batches really were cut by tokens (many), and the long title was truncated, not dropped
    batches = bulk.batches(titles[:100])
    assert len(batches) > 3 and max(ids.shape[1] for _, ids, _ in batches) <= bulk.max_seq_length
    assert sorted(np.concatenate([rows for rows, _, _ in batches]).tolist()) == list(range(100))
    # one title alone (the query path) and the empty list
    assert np.allclose(bulk.embed_query("The Hobbit"), want[titles.index("The Hobbit")], atol=1e-4)
    assert bulk.embed([]).shape == (0, ref.dimension)


@pytest.mark.integration
def test_bulk_embedder_error_in_tokenizer_thread_reaches_the_caller(pair):
    _ref, bulk = pair
    bulk.chunk_rows = 5
    with pytest.raises(TypeError):
        bulk.embed(["fine"] * 12 + [None] * 3)  # type: ignore[list-item]


@pytest.mark.integration
def test_tokenizer_processes_give_the_threads_batches_and_vectors(pair):
    _ref, bulk = pair
    titles = EDGE_TITLES + _titles(150, seed=9)
    random.Random(2).shuffle(titles)
    bulk.chunk_rows = 23  # several chunks: more than two per process in flight
    bulk.processes = 0
    want = bulk.embed(titles)
    want_batches = [bulk.batches(titles[s : s + 23]) for s in range(0, len(titles), 23)]
    bulk.processes, bulk.tokenize_wait_s = 2, 0.0
    try:
        got = bulk.embed(titles)
        from index.bulk_embedder import _worker_batches

        # the batches a process makes are the thread's, array for array
        pool = bulk._tokenizer_pool()
        args = (bulk.max_rows, bulk.batch_tokens, bulk.pad_id)
        for n, start in enumerate(range(0, len(titles), 23)):
            batches, seconds = pool.submit(_worker_batches, titles[start : start + 23], *args).result()
            assert seconds >= 0 and len(batches) == len(want_batches[n])
            for a, b in zip(batches, want_batches[n], strict=True):
                assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        # an error in a process reaches the caller, and the next call still works
        with pytest.raises(TypeError):
            bulk.embed(["fine"] * 40 + [None] * 3)  # type: ignore[list-item]
        assert np.allclose(bulk.embed(titles[:60]), want[:60], atol=1e-5)  # other batches: rounding
    finally:
        bulk.close()
        bulk.processes = 0
    assert np.array_equal(got, want)
    assert bulk.tokenize_wait_s > 0 and bulk._pool is None


def test_tokenizer_processes_default_only_on_cuda(monkeypatch):
    import index.bulk_embedder as be

    monkeypatch.setattr(be, "_cores", lambda: 16)
    assert be.default_tokenizer_processes("cuda") == 6 and be.default_tokenizer_processes("cuda:1") == 6
    assert be.default_tokenizer_processes("cpu") == 0
    monkeypatch.setattr(be, "_cores", lambda: 4)
    assert be.default_tokenizer_processes("cuda") == 0


def test_bulk_off_and_auto_on_cpu_keep_sentence_transformers():
    from index.embedder import SentenceTransformerEmbedder

    for value in ("false", "auto"):
        overrides = ["embedding.backend=torch", f"embedding.bulk={value}"]  # the torch backend, on a CPU
        emb = load_embedder(load_config(overrides=overrides).embedding)
        assert isinstance(emb, SentenceTransformerEmbedder), value


@pytest.mark.gpu
def test_bulk_fp16_on_cuda_keeps_recall_at_10_against_fp32():
    import torch

    # the torch backend on both sides (the CPU default is onnx int8)
    ref = load_embedder(
        load_config(overrides=["embedding.backend=torch", "embedding.bulk=false"]).embedding
    )  # CPU fp32
    gpu = load_embedder(load_config(overrides=["embedding.device=cuda"]).embedding)  # bulk: auto
    assert getattr(gpu, "half", False) and gpu.dtype == torch.float16
    titles = _titles(6000, seed=11)
    queries = _titles(400, seed=12)
    db32, db16 = ref.embed(titles), gpu.embed(titles)
    assert (db32 * db16).sum(axis=1).min() >= 0.999
    q = ref.embed(queries)
    top32 = np.argsort(-(q @ db32.T), axis=1)[:, :10]
    top16 = np.argsort(-(q @ db16.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top16, strict=True)])
    assert recall >= 0.999, recall


# --------------------------------------------------------------------------- parallel cleaning


def _messy_catalog(path: Path) -> Path:
    rng = random.Random(5)
    lines = [json.dumps(r) for r in list(generate_records(3000, seed=2))]
    bad = [
        "",
        "   ",
        '{"title": 5}',
        "not json at all",
        "[1, 2]",
        '{"title": "  ", "content": "x"}',
        '{"uid": "dup-1", "title": "First of two", "content": ""}',
        '{"uid": "dup-1", "title": "Second of two", "content": ""}',
        '{"uid": "bad uid", "title": "t", "content": ""}',
        '{"title": "Caf\\u00e9 &amp;#8217; <script>x</script>", "content": "--This text refers to the Paperback edition."}',
        '{"title": "' + "x" * 5000 + '"}',  # over max_line_bytes below
    ]
    for item in bad * 20:
        lines.insert(rng.randrange(len(lines)), item)
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    raw = b"\xef\xbb\xbf" + raw.replace(b"not json at all", b"\xff\xfe not utf-8", 3)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("policy", ["keep_first", "keep_last", "reject"])
def test_cleaning_processes_give_the_same_rows_summary_and_rejects(tmp_path, policy):
    data = _messy_catalog(tmp_path / "messy.jsonl")
    config = CatalogConfig(max_line_bytes=4000, duplicate_policy=policy)
    results = {}
    for workers in (0, 2):
        reader = CatalogReader(config, rejects_path=tmp_path / f"rejects{workers}.jsonl")
        rows = list(reader.iter_rows([data], workers=workers))
        summary = reader.summary.to_dict()
        summary.pop("seconds", None)
        summary.pop("rejects_path", None)
        results[workers] = (rows, summary, (tmp_path / f"rejects{workers}.jsonl").read_text())
    assert (
        results[0][0]
        and results[0][1]["rejected"] > 0
        and results[0][1]["duplicates"] + (results[0][1]["rejected"]) > 0
    )
    assert results[2] == results[0]


def test_cleaning_processes_stop_when_the_reader_stops_early(tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in list(generate_records(9000, seed=4))) + "\n")
    reader = CatalogReader(CatalogConfig())
    it = reader.iter_rows([data], workers=2)
    first = [next(it) for _ in range(10)]
    it.close()  # the pool is shut down (no hang, no leaked processes)
    assert reader._pool is None and len(first) == 10


# --------------------------------------------------------------------------- parallel BM25


def _meta_db(path: Path, n: int) -> Path:
    conn = open_for_writing(path)
    records = []
    for r in list(generate_records(n, seed=9)):
        uid, title, content = str(r["uid"]), r["title"], r.get("content") or ""
        records.append((uid_to_id(uid), uid, title, content, content_hash(title, content), "x", 1))
    conn.execute("BEGIN")
    conn.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)", records)
    conn.execute("COMMIT")
    conn.close()
    return path


def test_parallel_bm25_build_gives_the_same_arrays(tmp_path):
    meta = _meta_db(tmp_path / "meta.sqlite", 2500)
    want = lexical.build_segment(lexical._meta_rows(meta), champions=7)
    got = lexical.build_segment_from_db(meta, champions=7, workers=3)  # 6 runs of faiss ids
    assert len(want.ids) == int(sqlite3.connect(meta).execute("SELECT count(*) FROM rows").fetchone()[0])
    assert len(want.champ_docs) > 0  # champion lists were exercised
    for name in want.__dataclass_fields__:
        a, b = getattr(want, name), getattr(got, name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        else:
            assert a == b, name


# --------------------------------------------------------------------------- stage times


def test_build_reports_stage_times_in_the_summary_and_manifest(tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in list(generate_records(300, seed=1))) + "\n")
    config = load_config(overrides=[f"index.path={tmp_path / 'index'}"])
    report = build_index(config, [data], progress=False, embedder=HashingEmbedder(32))
    expected = {
        "read_clean_s",
        "sqlite_s",
        "embed_s",
        "faiss_add_s",
        "faiss_save_s",
        "lexical_s",
        "manifest_s",
    }
    assert expected <= set(report.stages) <= set(STAGE_NAMES)
    assert all(v >= 0 for v in report.stages.values())
    text = report.summary()
    for label in ("reading+cleaning", "SQLite", "embedding", "FAISS save", "BM25", "manifest"):
        assert label in text
    store = IndexStore.from_config(config)
    timings = read_manifest(store.version_dir(store.current_version()))["timings"]
    assert expected - {"manifest_s"} <= set(timings) and report.rows == 300


def test_the_sqlite_threads_records_are_the_reference_records():
    rows = [
        CatalogRow(
            uid="A1", title="Café \u00e9t\u00e9", content="d\u00e9j\u00e0 vu", source="x.jsonl", line=1
        ),
        CatalogRow(uid="B2", title="No description", content="", source=None, line=None),
        CatalogRow(uid="C3", title="Content None", content=None, source="y", line=7),  # type: ignore[arg-type]
    ]
    assert _records(rows) == [_record(r) for r in rows]
    assert _records(rows)[0][4] == content_hash("Café \u00e9t\u00e9", "d\u00e9j\u00e0 vu")


def test_an_embedding_error_fails_the_build_without_a_hang_and_leaves_nothing(tmp_path, monkeypatch):
    import threading

    import index.build as build_module

    class Failing(HashingEmbedder):
        def embed(self, texts, *, batch_size=None, progress=False):
            raise RuntimeError("embedding failed on purpose")

    # small chunks and queues: the SQLite thread fills the dead embedding thread's queue at once
    monkeypatch.setattr(build_module, "CHUNK_ROWS", 50)
    monkeypatch.setattr(build_module._StageThread, "MAX_PENDING", 1)
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in generate_records(2000, seed=1)) + "\n")
    config = load_config(overrides=[f"index.path={tmp_path / 'index'}"])
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            build_index(config, [data], progress=False, embedder=Failing(16))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "the build hung after the embedding thread failed"
    assert len(outcome) == 1 and "on purpose" in str(outcome[0])
    store = IndexStore.from_config(config)
    assert store.current_version() is None
    assert not list((tmp_path / "index" / "versions").glob("*/manifest.json"))


@pytest.mark.integration
def test_build_through_the_bulk_embedder_stores_the_reference_vectors(pair, tmp_path):
    ref, bulk = pair
    bulk.chunk_rows = 16  # several embed calls of 8 chunks each, and a last partial one
    data = tmp_path / "c.jsonl"
    records = list(generate_records(300, seed=6))
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    config = load_config(overrides=[f"index.path={tmp_path / 'index'}", "index.descriptions=false"])
    report = build_index(config, [data], progress=False, embedder=bulk)
    assert report.rows == len(records) and report.stages["embed_s"] > 0
    from index.vector import FaissIndex

    store = IndexStore.from_config(config)
    vdir = store.version_dir(store.current_version())
    index = FaissIndex.load(vdir / "vectors.faiss", "flat", bulk.dimension, {})
    conn = sqlite3.connect(vdir / "meta.sqlite")
    rows = conn.execute("SELECT faiss_id, title FROM rows ORDER BY faiss_id").fetchall()
    conn.close()
    stored = np.stack([index.raw.reconstruct(int(i)) for i, _ in rows])
    want = ref.embed([t for _, t in rows])
    assert (stored * want).sum(axis=1).min() >= 0.9999


def test_a_cuda_build_with_the_default_backend_sizes_its_queue_for_the_bulk_embedder(monkeypatch):
    """`embedding.backend: auto` is torch on CUDA: the build expects the bulk embedder's call size
    (the H200 run where it did not kept the SQLite thread waiting 16.8 s on a small queue)."""
    import index.embedder as embedder_module
    from index.build import _bulk_rows, _ModelLoad
    from index.bulk_embedder import CHUNK_ROWS as BULK_CHUNK_ROWS

    monkeypatch.setattr(
        embedder_module, "_resolve_device", lambda device: "cuda" if device != "cpu" else "cpu"
    )
    given = _ModelLoad(load_config(), HashingEmbedder(8))
    loading = _ModelLoad.__new__(_ModelLoad)
    loading._thread, loading._embedder = object(), None  # type: ignore[assignment]  # "still loading"
    assert _bulk_rows(load_config(overrides=["embedding.device=cuda"]), loading) == BULK_CHUNK_ROWS
    assert _bulk_rows(load_config(overrides=["embedding.device=auto"]), loading) == BULK_CHUNK_ROWS
    assert _bulk_rows(load_config(overrides=["embedding.device=cpu"]), loading) is None
    assert (
        _bulk_rows(load_config(overrides=["embedding.device=cuda", "embedding.bulk=false"]), loading) is None
    )
    assert _bulk_rows(load_config(overrides=["embedding.device=cuda"]), given) is None  # its own size


def test_a_bulk_build_shortens_the_thread_switch_interval_and_restores_it(tmp_path):
    import sys

    from index.build import BULK_SWITCH_INTERVAL_S

    seen: list[float] = []

    class BulkShaped(HashingEmbedder):
        chunk_rows = 64  # looks like the bulk embedder to the build

        def embed(self, texts, *, batch_size=None, progress=False):
            seen.append(sys.getswitchinterval())
            return super().embed(texts, batch_size=batch_size, progress=progress)

    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in generate_records(200, seed=2)) + "\n")
    before = sys.getswitchinterval()
    config = load_config(overrides=[f"index.path={tmp_path / 'index'}", "index.descriptions=false"])
    build_index(config, [data], progress=False, embedder=BulkShaped(16))
    assert seen and all(v == pytest.approx(min(before, BULK_SWITCH_INTERVAL_S)) for v in seen)
    assert sys.getswitchinterval() == before
    seen.clear()
    build_index(config, [data], progress=False, embedder=HashingEmbedder(16))  # not bulk: untouched
    assert sys.getswitchinterval() == before
