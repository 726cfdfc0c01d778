"""`rag compare`: question files, column configs, and the Markdown table through the real pipeline.

.venv/bin/python -m pytest tests/test_compare.py -q
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rag.compare import build_variants, read_questions, run_compare, to_markdown
from rag.config import Config, ConfigError

QUESTIONS = ["who wrote City of Djinns?", "what is Mog's Kittens about?"]


def test_read_questions_txt_jsonl_json(tmp_path: Path) -> None:
    txt = tmp_path / "q.txt"
    txt.write_text(
        "# comment\nwho wrote City of Djinns?\n\n  what is Mog's Kittens about?  \n", encoding="utf-8"
    )
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "question": q}) for i, q in enumerate(QUESTIONS)) + "\n")
    js = tmp_path / "q.json"
    js.write_text(json.dumps([QUESTIONS[0], {"question": QUESTIONS[1]}]))
    for path in (txt, jsonl, js):
        assert read_questions(path) == QUESTIONS


def test_read_questions_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\n{"q": "missing field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a question"):
        read_questions(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "ok?"}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        read_questions(broken)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no questions"):
        read_questions(empty)
    with pytest.raises(FileNotFoundError, match="--questions"):
        read_questions(tmp_path / "missing.txt")


def test_build_variants_letters_overrides_and_context(tmp_path: Path) -> None:
    a = tmp_path / "base.yaml"
    a.write_text("retrieval:\n  k: 3\n")
    variants = build_variants(
        [str(a), str(a)], ["retrieval.k=4"], {"b": ["generator.max_sentences=1"]}, "both"
    )
    assert [v.label for v in variants] == [
        "a: base",
        "a: base, no context",
        "b: base (generator.max_sentences=1)",
        "b: base (generator.max_sentences=1), no context",
    ]
    assert [v.use_context for v in variants] == [True, False, True, False]
    assert all(v.config.retrieval.k == 4 for v in variants)  # --set applies to every column
    assert variants[0].config.generator.max_sentences == 3 and variants[2].config.generator.max_sentences == 1
    assert variants[0].key == variants[1].key != variants[2].key


def test_build_variants_reports_every_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--set-c: there is no configuration c"):
        build_variants([None], [], {"c": ["retrieval.k=2"]})
    with pytest.raises(ConfigError) as info:
        build_variants([None, None], [], {"a": ["retrieval.kk=2"], "b": ["generator.backend=nope"]})
    text = str(info.value)
    assert (
        "column a" in text and "retrieval.kk" in text and "column b" in text and "generator.backend" in text
    )


# --------------------------------------------------------------------------- through the pipeline


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("tiny-llama-compare"))


@pytest.fixture
def in_memory_index(monkeypatch: pytest.MonkeyPatch, minilm) -> list[Config]:  # type: ignore[no-untyped-def]
    """Serve every compared config from the in-memory test catalog (the rest is the real pipeline)."""
    import rag.compare
    from rag.generators import make_generator
    from rag.pipeline import RAG
    from rag.retrieval import Retriever
    from tests.helpers import CATALOG, ArraySnapshot, StaticLive

    vectors = minilm.embed([r.title for r in CATALOG])
    built: list[Config] = []

    def factory(config: Config) -> Any:
        built.append(config)
        return RAG(
            config,
            Retriever(config, StaticLive(ArraySnapshot(CATALOG, vectors)), minilm),
            make_generator(config),
        )

    monkeypatch.setattr(rag.compare, "_default_rag_factory", factory)
    return built


@pytest.mark.integration
def test_compare_extractive_with_and_without_context(in_memory_index: list[Config]) -> None:
    variants = build_variants([None], context="both")
    result = run_compare(QUESTIONS, variants)
    assert len(in_memory_index) == 1  # one RAG serves both columns
    with_context, without = result.cells[0]
    assert with_context.answer is not None and "Dalrymple" in with_context.answer.text
    assert with_context.answer.sources[0].uid == "B001"
    assert (
        without.answer is not None and without.answer.sources == [] and "Dalrymple" not in without.answer.text
    )
    table = to_markdown(result)
    assert "| question | a: defaults | a: defaults, no context |" in table
    assert "City of Djinns: A Year in Delhi (B001)" in table


@pytest.mark.integration
def test_rag_compare_cli_extractive_vs_hf_tiny(
    tmp_path: Path, tiny_model_dir: Path, in_memory_index: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    from rag.cli import main

    questions = tmp_path / "q.txt"
    questions.write_text("\n".join(QUESTIONS) + "\n")
    extractive = tmp_path / "extractive.yaml"
    extractive.write_text("generator:\n  backend: extractive\n")
    hf = tmp_path / "hf-tiny.yaml"
    hf.write_text(
        f"generator:\n  backend: hf\n  model: {tiny_model_dir}\n  max_new_tokens: 8\n  device: cpu\n"
    )
    out = tmp_path / "compare.md"
    json_out = tmp_path / "compare.json"
    status = main(
        [
            "compare",
            "--questions",
            str(questions),
            "--configs",
            str(extractive),
            str(hf),
            "--set-b",
            "generator.max_new_tokens=6",
            "--out",
            str(out),
            "--json",
            str(json_out),
            "--quiet",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    table = out.read_text(encoding="utf-8")
    assert printed == table
    lines = table.splitlines()
    assert lines[0] == "| question | a: extractive | b: hf-tiny (generator.max_new_tokens=6) |"
    assert lines[1] == "|---|---|---|"
    rows = list(lines[2:4])
    assert rows[0].startswith("| who wrote City of Djinns? | ") and "Dalrymple" in rows[0]
    assert rows[1].startswith("| what is Mog's Kittens about? | ")
    assert all(row.count(" | ") >= 2 and "**error**" not in row for row in rows)
    assert "| b: hf-tiny (generator.max_new_tokens=6) | hf | yes | 2/2 |" in table
    data = json.loads(json_out.read_text())
    hf_answers = [row["answers"][1]["answer"] for row in data["rows"]]
    assert all(a["generator"] == "hf" and a["sources"] for a in hf_answers)
    assert [c.generator.backend for c in in_memory_index] == ["extractive", "hf"]
    assert in_memory_index[1].generator.max_new_tokens == 6


@pytest.mark.integration
def test_a_failing_cell_is_reported_and_the_rest_still_runs(in_memory_index: list[Config]) -> None:
    variants = build_variants(
        [None, None],
        column_overrides={
            "b": [
                "generator.backend=openai",
                "generator.base_url=http://127.0.0.1:9/v1",
                "generator.max_retries=0",
            ]
        },
    )
    result = run_compare(QUESTIONS[:1], variants)
    ok, failed = result.cells[0]
    assert ok.answer is not None and failed.answer is None
    assert failed.error is not None and "cannot connect" in failed.error and "127.0.0.1:9" in failed.error
    assert "**error**: OpenAIServerError" in to_markdown(result)


def test_markdown_cells_escape_pipes_and_newlines() -> None:
    from rag.compare import Cell, CompareResult, Variant
    from rag.types import Answer

    answer = Answer(question="q", text="a | b\nc", unsupported_sentences=["x y z."])
    result = CompareResult(["what | why?"], [Variant("a: x", Config())], [[Cell(answer=answer, seconds=0.5)]])
    table = to_markdown(result, sources=False)
    assert "| what \\| why? | a \\| b<br>c<br>*(1 unsupported sentence)* |" in table
    assert "| a: x | extractive | yes | 1/1 | 0/1 | 0.500 |" in table
