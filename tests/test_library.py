"""`rag.answer()` as a library: one pipeline per configuration content, closing, typing, the README example.

    .venv/bin/python -m pytest tests/test_library.py -q

The index is a 300-row synthetic catalog embedded with the bundled MiniLM (the default
embedding model), built once per module in a temp dir.
"""

from __future__ import annotations

import gc
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rag
from rag.config import Config, load_config

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"
QUESTION = "Who wrote City of Djinns?"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like a checkout after `make demo`: data/index with the default embedder."""
    from index.build import build_index
    from rag.synthetic import write_synthetic_catalog

    root = tmp_path_factory.mktemp("library")
    catalog = write_synthetic_catalog(root / "data" / "catalog.jsonl", rows=300, seed=0)
    build_index(load_config(None, [f"index.path={root / 'data' / 'index'}"]), [catalog], progress=False)
    return root


@pytest.fixture
def config(workdir: Path) -> Iterator[Config]:
    rag.close()
    yield load_config(None, [f"index.path={workdir / 'data' / 'index'}"])
    rag.close()


@pytest.fixture
def embedder_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import index.embedder

    loads: list[str] = []
    real = index.embedder.load_embedder

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append("load")
        return real(*args, **kwargs)

    monkeypatch.setattr(index.embedder, "load_embedder", counting)
    return loads


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_twenty_calls_with_one_config_object_load_once_and_stay_fast_and_flat(
    config: Config, embedder_loads: list[str]
) -> None:
    first = rag.answer(QUESTION, config=config)
    assert "Dalrymple" in first.text
    gc.collect()
    rss_start = _rss()
    seconds = []
    for _ in range(19):
        started = time.perf_counter()
        answer = rag.answer(QUESTION, config=config)
        seconds.append(time.perf_counter() - started)
        assert answer.text == first.text
    gc.collect()
    growth_mib = (_rss() - rss_start) / 2**20
    assert embedder_loads == ["load"], "the embedding model was loaded more than once"
    assert max(seconds) < 0.050, f"calls after the first took {[round(s * 1000, 1) for s in seconds]} ms"
    assert growth_mib < 20, f"RSS grew by {growth_mib:.1f} MiB over 19 calls"
    print(f"calls 2-20: max {max(seconds) * 1000:.1f} ms, RSS growth {growth_mib:.1f} MiB")


def test_equal_configs_share_a_pipeline_and_close_drops_it(config: Config, embedder_loads: list[str]) -> None:
    pipeline = rag.get_rag(config)
    twin = load_config(None, [f"index.path={config.index.path}"])  # another object, same content
    assert twin is not config and rag.get_rag(twin) is pipeline
    other = load_config(None, [f"index.path={config.index.path}", "retrieval.k=3"])
    assert rag.get_rag(other) is not pipeline
    assert len(embedder_loads) == 2
    assert rag.close(config) == 1 and pipeline.closed
    with pytest.raises(RuntimeError, match="closed"):
        pipeline.answer(QUESTION)
    assert rag.get_rag(config) is not pipeline  # built again after close
    assert rag.close() == 2  # every cached pipeline
    assert rag.close() == 0


def test_config_path_is_cached_by_content(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, embedder_loads: list[str]
) -> None:
    rag.close()
    yaml_file = workdir / "a.yaml"
    yaml_file.write_text(f"index:\n  path: {workdir / 'data' / 'index'}\n")
    first = rag.get_rag(str(yaml_file))
    assert rag.get_rag(yaml_file) is first  # a Path and a str of the same file
    assert rag.get_rag(load_config(yaml_file)) is first  # and the Config it holds
    assert embedder_loads == ["load"]
    rag.close()


def test_pipeline_checks_its_parts_when_built(config: Config) -> None:
    from rag.generators.extractive import ExtractiveGenerator
    from rag.pipeline import RAG

    with pytest.raises(TypeError, match="retriever"):
        RAG(config, object(), ExtractiveGenerator(config))
    with pytest.raises(TypeError, match="generator"):
        RAG(config, rag.get_rag(config).retriever, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        rag.answer(QUESTION, config=42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="k must be"):
        rag.answer(QUESTION, config=config, k=0)


def test_answer_is_typed_through_overloads() -> None:
    import typing

    hints = [
        typing.get_type_hints(f, globalns=vars(rag) | {"AnswerStream": rag.AnswerStream, "RAG": rag.RAG})
        for f in typing.get_overloads(rag.answer)
    ]
    assert [h["return"] for h in hints] == [rag.Answer, rag.AnswerStream]


def test_readme_python_example_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The README's "From Python" block, as written, from a checkout after `make demo`."""
    match = re.search(r"<!-- example: python -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "README.md lost its Python example"
    # configs/sample.yaml names the sample index: here it points at the demo index instead
    (workdir / "configs").mkdir(exist_ok=True)
    (workdir / "configs" / "sample.yaml").write_text("index:\n  path: data/index\n")
    monkeypatch.chdir(workdir)
    rag.close()
    try:  # the README's own code
        exec(compile(match.group(1), "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        rag.close()
    out = capsys.readouterr().out
    assert "Dalrymple" in out and "City of Djinns" in out
    assert os.getcwd() == str(workdir)
