"""`rag bench` dispatch, the report builder and the query benchmark's vector tiling (fast, no model).

.venv/bin/python -m pytest tests/test_eval_bench.py -q
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rag.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_rag_bench_lists_scripts_and_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 0
    listed = capsys.readouterr().out
    assert "query" in listed and "benchmarks/bench_query.py" in listed and "report" in listed
    assert main(["bench", "no_such_benchmark"]) == 2
    assert "known benchmarks" in capsys.readouterr().err


def test_tiled_vectors_keep_the_real_ones_and_perturb_the_copies() -> None:
    bench = _load("bench_query")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    chunks = list(bench.tiled_vectors(base, 130, noise=0.01, seed=1, chunk=40))
    ids = np.concatenate([c[0] for c in chunks])
    vectors = np.concatenate([c[1] for c in chunks])
    assert ids.tolist() == list(range(130))
    assert np.allclose(vectors[:50], base)  # the real vectors untouched
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cos = (vectors[50:100] * base).sum(axis=1)
    assert cos.min() > 0.95 and not np.allclose(vectors[50:100], base)  # near, not equal


def test_report_renders_query_and_eval_results(tmp_path: Path) -> None:
    report = _load("report")
    env = {"cpu": "Test CPU", "cores": 2, "ram_gib": 4, "python": "3.11", "torch": "x", "faiss": "y"}
    result = {
        "rows": 10000,
        "index_type": "flat",
        "real_vectors": 10000,
        "tiled_vectors": 0,
        "build_s": 0.1,
        "embed_p50_ms": 5.0,
        "embed_p95_ms": 7.0,
        "search_p50_ms": 0.5,
        "search_p95_ms": 0.9,
        "total_p50_ms": 5.6,
        "total_p95_ms": 7.9,
        "hit@10": 1.0,
    }
    (tmp_path / "bench_query.json").write_text(
        json.dumps(
            {
                "benchmark": "query",
                "environment": env,
                "embedding_model": "m",
                "embed_rows": 10000,
                "noise": 0.01,
                "k": 10,
                "embedding": {},
                "results": [result, dict(result, rows=100000, total_p50_ms=9.0)],
            }
        )
    )
    row = {
        "n": 3,
        "recall@1": 0.5,
        "recall@5": 1.0,
        "recall@10": 1.0,
        "mrr": 0.75,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
    }
    (tmp_path / "retrieval.json").write_text(
        json.dumps(
            {"kind": "retrieval", "ks": [1, 5, 10], "summary": {"exact": row, "overall": row}, "info": {}}
        )
    )
    (tmp_path / "other.json").write_text(json.dumps({"titles_per_s": 123.4}))
    out = report.build_report(tmp_path)
    text = out.read_text()
    assert "| 100,000 | flat | 9.0 |" in text and "machine: CPU Test CPU (2 cores)" in text
    assert "| exact | 3 | 0.500 | 1.000 |" in text and "| titles_per_s | 123.4 |" in text
    assert (tmp_path / "bench_query_latency.png").stat().st_size > 1000
    assert (tmp_path / "retrieval_recall.png").stat().st_size > 1000
