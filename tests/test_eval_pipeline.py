"""The evaluations end to end on a small synthetic catalog (hashing embedder, extractive and tiny-LLM generators).

.venv/bin/python -m pytest tests/test_eval_pipeline.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.cli import main
from rag.config import load_config
from rag.evaluation.questions import EvalQuestion, generate_questions, write_questions
from rag.evaluation.runner import (
    answers_table,
    evaluate_answers,
    evaluate_retrieval,
    prepare_index,
    resolve_questions,
    retrieval_table,
    run_ablation,
)

pytestmark = pytest.mark.integration

FAST = ["embedding.model=hashing:64", "retrieval.k=5"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rag.synthetic import write_synthetic_catalog

    path = tmp_path_factory.mktemp("eval") / "catalog.jsonl"
    write_synthetic_catalog(path, rows=600, seed=0)
    return path


@pytest.fixture(scope="module")
def indexed(catalog: Path, tmp_path_factory: pytest.TempPathFactory):
    from rag.catalog import read_catalog
    from rag.retrieval import Retriever

    cache = tmp_path_factory.mktemp("cache")
    config = prepare_index(load_config(None, FAST), [catalog], cache_dir=cache, echo=lambda _m: None)
    rows, _ = read_catalog([catalog], config.catalog)
    return config, Retriever.from_config(config), rows


def test_retrieval_eval_finds_exact_titles_and_reports_every_kind(indexed) -> None:
    _config, retriever, rows = indexed
    questions = generate_questions(rows, n=48, seed=0)
    items = resolve_questions(questions, retriever.snapshot)
    result = evaluate_retrieval(retriever, items)
    summary = result["summary"]
    assert set(summary) == {q.kind for q in questions} | {"overall"}
    assert summary["overall"]["n"] == 48
    assert summary["exact"]["recall@1"] >= 0.8  # exact titles: fused lexical title score
    for row in summary.values():
        assert 0 <= row["recall@1"] <= row["recall@5"] <= row["recall@10"] <= 1
        assert row["recall@1"] <= row["mrr"] <= row["recall@10"]
    for record in result["questions"]:
        assert record["rank"] is None or 1 <= record["rank"] <= 10
    table = retrieval_table(summary)
    assert table.splitlines()[0].startswith("| kind | n | recall@1")
    assert "**overall**" in table


def test_title_only_questions_match_by_cleaned_title(indexed) -> None:
    _config, retriever, rows = indexed
    row = next(r for r in rows if r.content)
    wrong = EvalQuestion("w", row.title, uid="no-such-uid", kind="x")
    by_title = EvalQuestion("t", row.title, title=f"  {row.title.upper()} ", kind="x")
    items = resolve_questions([wrong, by_title], retriever.snapshot, warn=lambda _m: None)
    ranks = {r["qid"]: r["rank"] for r in evaluate_retrieval(retriever, items)["questions"]}
    assert ranks["w"] is None  # a uid that is not in the catalog is never found
    assert ranks["t"] is not None


def test_answers_eval_scores_extractive_answers(indexed) -> None:
    from rag.pipeline import RAG

    config, retriever, rows = indexed
    with_content = [r for r in rows if r.content][:8]
    questions = [
        EvalQuestion(
            f"a{i}",
            f"What is {r.title} about?",
            uid=r.uid,
            kind="template_en",
            must_contain=[r.content.split()[0]],
        )
        for i, r in enumerate(with_content)
    ]
    questions.append(
        EvalQuestion(
            "never",
            f"Tell me about {with_content[0].title}",
            uid=with_content[0].uid,
            kind="impossible",
            must_contain=["zzqx-not-in-any-answer"],
        )
    )
    # the needle is the question's own first title word: an echo of the question would "contain" it
    title_word = with_content[1].title.split()[0]
    questions.append(
        EvalQuestion(
            "echo",
            f"What is {with_content[1].title} about?",
            uid=with_content[1].uid,
            kind="echo",
            must_contain=[title_word],
        )
    )
    questions.append(
        EvalQuestion("absent", "who wrote Zzyzx Qwertyuiop Vlorbnik?", kind="absent", language="en")
    )
    rag = RAG.from_config(config, retriever=retriever)
    items = resolve_questions(questions, retriever.snapshot)
    result = evaluate_answers(rag, items)
    summary = result["summary"]
    overall = summary["overall"]
    assert summary["impossible"]["must_contain"] == 0.0
    assert summary["echo"]["n_must_skipped"] == 1 and summary["echo"]["n_must_contain"] == 0
    assert overall["cites_expected"] >= 0.75  # extractive answers cite [1], the row they quote
    assert (
        overall["cites_expected"] <= overall["retrieved_expected"]
    )  # citing needs the row among the sources
    assert overall["grounded"] >= 0.75
    assert overall["abstained"] <= 0.2 and overall["false_abstention"] == 0.0
    assert summary["absent"]["n_absent"] == 1 and 0 <= summary["absent"]["abstention_rate"] <= 1
    assert summary["lang:en"]["n"] == 1
    assert overall["n_rouge"] == 10 and 0 < overall["rouge_l"] <= 1
    # the extractive answer always ends on its own: finish_reason "stop" (or none reported at all)
    assert overall["n_stop"] in (0, overall["n"]) and (overall["n_stop"] == 0 or overall["stop_rate"] == 1.0)
    assert 0 < overall["p50_s"] <= overall["p95_s"]
    table = answers_table(summary)
    assert "| **overall** | 11 |" in table and "| absent | 1 |" in table
    records = {r["qid"]: r for r in result["questions"]}
    for record in records.values():  # cites_expected is read from the answer's own [n]
        if record["cites_expected"]:
            assert "[" in record["answer"]


def test_cli_questions_retrieval_answers(
    catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qfile, cache = tmp_path / "q.jsonl", tmp_path / "cache"
    sets = [arg for s in FAST for arg in ("--set", s)]
    assert (
        main(
            [
                "eval",
                "questions",
                "--data",
                str(catalog),
                "--out",
                str(qfile),
                "--n",
                "30",
                "--seed",
                "2",
                *sets,
            ]
        )
        == 0
    )
    assert len(qfile.read_text().splitlines()) == 30
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "retrieval",
                "-q",
                str(qfile),
                "--data",
                str(catalog),
                "--cache-dir",
                str(cache),
                "--out",
                str(out),
                "--records",
                *sets,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| **overall** | 30 |" in printed and "machine: CPU" in printed
    payload = json.loads(out.read_text())
    assert payload["summary"]["overall"]["n"] == 30 and len(payload["questions"]) == 30
    assert payload["info"]["environment"]["cores"] >= 1
    out2 = tmp_path / "a.json"
    assert (
        main(
            [
                "eval",
                "answers",
                "-q",
                str(qfile),
                "--data",
                str(catalog),
                "--cache-dir",
                str(cache),
                "--kinds",
                "exact,typo",
                "--out",
                str(out2),
                "--records",
                *sets,
            ]
        )
        == 0
    )
    answers = json.loads(out2.read_text())
    assert {q["kind"] for q in answers["questions"]} <= {"exact", "typo"}
    overall = answers["summary"]["overall"]
    for key in (
        "retrieved_expected",
        "n_must_skipped",
        "abstained",
        "false_abstention",
        "abstention_rate",
        "stop_rate",
    ):
        assert key in overall
    # --split keeps one split, --kind is --kinds
    from rag.evaluation.questions import load_questions

    questions = load_questions(qfile)
    for i, q in enumerate(questions):
        q.split = "test" if i % 3 == 0 else "train"
    split_file = write_questions(tmp_path / "split.jsonl", questions)
    out3 = tmp_path / "s.json"
    assert (
        main(
            [
                "eval",
                "answers",
                "-q",
                str(split_file),
                "--data",
                str(catalog),
                "--cache-dir",
                str(cache),
                "--split",
                "test",
                "--kind",
                "exact,typo,truncated",
                "--out",
                str(out3),
                "--records",
                *sets,
            ]
        )
        == 0
    )
    split_answers = json.loads(out3.read_text())
    wanted = {q.qid for q in questions if q.split == "test" and q.kind in {"exact", "typo", "truncated"}}
    assert {q["qid"] for q in split_answers["questions"]} == wanted and split_answers["info"][
        "split"
    ] == "test"
    assert (
        main(
            [
                "eval",
                "retrieval",
                "-q",
                str(split_file),
                "--data",
                str(catalog),
                "--cache-dir",
                str(cache),
                "--split",
                "nope",
                *sets,
            ]
        )
        == 2
    )  # no question of that split: a usage error
    assert (
        main(["eval", "retrieval", "-q", str(tmp_path / "missing.jsonl"), *sets]) == 2
    )  # clear error, no traceback


def test_placeholder_questions_resolve_against_the_index(indexed, tmp_path: Path) -> None:
    _config, retriever, rows = indexed
    questions = generate_questions(rows, n=12, seed=4, placeholders=True)
    items = resolve_questions(questions, retriever.snapshot)
    by_uid = {r.uid: r for r in rows}
    assert all("{title" not in item.text for item in items)
    assert all(item.gold is not None and item.gold.uid == by_uid[item.expected_uid].uid for item in items)
    # a stale uid falls back to the row's line in the catalog file
    stale = EvalQuestion("s", "{title}", uid="h:stale", line=questions[0].line, kind="exact")
    (item,) = resolve_questions([stale], retriever.snapshot, warn=lambda _m: None)
    assert item.expected_uid == questions[0].uid and item.text == by_uid[questions[0].uid].title


def _tiny_adapter(model_dir: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(out)  # safetensors
    return out


def test_ablation_runs_four_variants_with_a_tiny_model(indexed, tmp_path: Path) -> None:
    from finetune.tiny import create_tiny_model

    config, retriever, rows = indexed
    model_dir = create_tiny_model(tmp_path / "tiny")
    adapter = _tiny_adapter(model_dir, tmp_path / "adapter")
    config = load_config(
        None,
        [
            *FAST,
            "generator.backend=hf",
            f"generator.model={model_dir}",
            "generator.max_new_tokens=8",
            "generator.device=cpu",
        ],
    )
    config.index.path = retriever.config.index.path
    questions = generate_questions(rows, n=4, seed=5, kinds=("template_en",))
    items = resolve_questions(questions, retriever.snapshot)
    results = run_ablation(config, retriever, items, str(adapter), echo=lambda _m: None)
    assert list(results) == [
        "base + context",
        "base, no context",
        "fine-tuned + context",
        "fine-tuned, no context",
    ]
    for name, result in results.items():
        overall = result["summary"]["overall"]
        assert overall["n"] == 4 and overall["p50_s"] > 0
        if "no context" in name:
            assert (
                overall["cites_expected"] != overall["cites_expected"]
            )  # NaN: nothing to cite without context
        else:
            assert 0 <= overall["cites_expected"] <= 1
    base = [q["answer"] for q in results["base + context"]["questions"]]
    tuned = [q["answer"] for q in results["fine-tuned + context"]["questions"]]
    assert base != tuned  # the adapter really changes the model
    table = answers_table({n: r["summary"]["overall"] for n, r in results.items()}, first_column="variant")
    assert table.count("\n") == 5 and "fine-tuned, no context" in table


def test_building_and_querying_a_pipeline_leaves_torch_threads_alone(catalog: Path, tmp_path: Path) -> None:
    """retrieval.faiss_threads=1 once set OpenMP process-wide, which put torch (and the LLM) on one thread."""
    import torch

    from rag.pipeline import RAG

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = prepare_index(
            load_config(None, [*FAST, "retrieval.faiss_threads=1"]),
            [catalog],
            cache_dir=tmp_path,
            echo=lambda _m: None,
        )
        rag = RAG.from_config(config)
        assert torch.get_num_threads() == 2
        rag.answer("what is it about?")
        rag.retrieve("a question about some product", k=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_batched_answer_eval_gives_the_answers_of_one_at_a_time(indexed, tmp_path: Path) -> None:
    from finetune.tiny import create_tiny_model
    from rag.pipeline import RAG

    config, retriever, rows = indexed
    model_dir = create_tiny_model(tmp_path / "tiny")
    config = load_config(
        None,
        [
            *FAST,
            "generator.backend=hf",
            f"generator.model={model_dir}",
            "generator.max_new_tokens=8",
            "generator.device=cpu",
        ],
    )
    config.index.path = retriever.config.index.path
    questions = generate_questions(rows, n=6, seed=3, kinds=("template_en", "exact"))
    questions.append(EvalQuestion("absent", "who wrote Zzyzx Qwertyuiop Vlorbnik?", kind="absent"))
    items = resolve_questions(questions, retriever.snapshot)
    rag = RAG.from_config(config, retriever=retriever)
    one = evaluate_answers(rag, items, batch_size=1)
    batched = evaluate_answers(rag, items, batch_size=4)
    assert one["batch_size"] == 1 and batched["batch_size"] == 4 and batched["wall_s"] > 0
    keys = ("qid", "answer", "finish_reason", "found", "grounded")
    assert [[q[k] for k in keys] for q in batched["questions"]] == [
        [q[k] for k in keys] for q in one["questions"]
    ]
