"""Unit tests of the evaluation metrics and question files (no index, no model).

    .venv/bin/python -m pytest tests/test_eval_metrics.py -q
"""
from __future__ import annotations

import json
import math

import pytest

from rag.evaluation.metrics import contains_all, contains_share, lcs_length, mrr, percentile, recall_at_k, rouge_l
from rag.evaluation.questions import (
    KINDS, EvalQuestion, QuestionFileError, generate_questions, load_questions, render_question, truncate_title,
    typo_title, write_questions,
)
from rag.types import CatalogRow


def test_recall_and_mrr_by_hand() -> None:
    ranks = [1, 3, None, 7, 2]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at_k(ranks, 5) == pytest.approx(3 / 5)
    assert recall_at_k(ranks, 10) == pytest.approx(4 / 5)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 7 + 1 / 2) / 5)
    assert math.isnan(mrr([]))
    with pytest.raises(ValueError):
        recall_at_k(ranks, 0)


def test_rouge_l_matches_hand_computed_lcs() -> None:
    assert lcs_length("a b c d e".split(), "a x c y e".split()) == 3
    # candidate 4 tokens, reference 6 tokens, LCS "the cat the mat" = 4 -> P=1, R=4/6
    score = rouge_l("the cat the mat", "the cat sat on the mat")
    p, r = 1.0, 4 / 6
    assert score == pytest.approx(2 * p * r / (p + r))
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("same words here", "Same, words: here!") == pytest.approx(1.0)
    assert rouge_l("completely different", "nothing shared at all") == 0.0


def test_must_contain_decodes_entities_and_ignores_case() -> None:
    answer = "Judith Kerr&#8217;s cat MOG is back &amp; hungry."
    assert contains_all(answer, ["kerr's", "mog", "& hungry"])
    assert contains_all("Kerr’s book", ["Kerr's"])  # curly vs straight quote
    assert not contains_all(answer, ["Kerr", "tiger"])
    assert contains_share(answer, ["Kerr", "tiger"]) == 0.5
    assert contains_all(answer, [])


def test_percentile_interpolates_like_numpy() -> None:
    values = [0.1, 0.4, 0.2, 0.3, 1.0]
    assert percentile(values, 50) == pytest.approx(0.3)
    assert percentile(values, 95) == pytest.approx(0.88)
    assert math.isnan(percentile([], 50))


def test_title_variants() -> None:
    assert truncate_title("City of Djinns: A Year in Delhi") == "City of Djinns"
    assert truncate_title("The Long Ships and the Sea Kings") == "The Long Ships and the"  # ceil(0.6 * 7) = 5 words
    assert truncate_title("Flux") == ""
    typo = typo_title("The Lighthouse Keeper's Daughter", seed=3)
    assert typo != "The Lighthouse Keeper's Daughter" and typo == typo_title("The Lighthouse Keeper's Daughter", seed=3)
    assert all(a[0] == b[0] for a, b in zip(typo.split(), "The Lighthouse Keeper's Daughter".split()))
    assert render_question("Quem escreveu {title:lower}?", "Mog's Kittens") == "Quem escreveu mog's kittens?"
    assert render_question("{title:trunc}", "City of Djinns: A Year in Delhi") == "City of Djinns"


def _rows(n: int) -> list[CatalogRow]:
    words = ["Lantern", "Harbour", "Winter", "Garden", "Falcon", "River", "Copper", "Meadow", "Orchard", "Signal"]
    rows = [CatalogRow(uid=f"u{i}", title=f"The {words[i % 10]} of {words[(i * 3 + 1) % 10]}: Book {i} of the Series",
                       content=f"Description {i}.", line=i + 1) for i in range(n)]
    rows.append(CatalogRow(uid="dup1", title="Same Title Twice"))
    rows.append(CatalogRow(uid="dup2", title="same title twice"))
    return rows


def test_generator_covers_every_kind_and_skips_ambiguous_titles() -> None:
    rows = _rows(60)
    questions = generate_questions(rows, n=60, seed=1)
    assert len(questions) == 60
    assert {q.kind for q in questions} == set(KINDS)
    assert not {"dup1", "dup2"} & {q.uid for q in questions}
    by_uid = {r.uid: r for r in rows}
    for q in questions:
        title = by_uid[q.uid].title
        if q.kind == "exact":
            assert q.question == title
        elif q.kind == "lowercase":
            assert q.question == title.lower()
        elif q.kind == "typo":
            assert q.question != title and len(q.question) <= len(title)
        elif q.kind in ("template_en", "template_pt"):
            assert title in q.question and q.question != title
    assert generate_questions(rows, n=60, seed=1)[5].question == questions[5].question  # deterministic


def test_placeholder_questions_carry_no_title_text(tmp_path) -> None:
    rows = _rows(20)
    questions = generate_questions(rows, n=12, seed=0, placeholders=True)
    for q in questions:
        assert q.title is None and q.uid and q.line is not None and "{title" in q.question
        assert rows[q.line - 1].title.split(":")[0] not in q.question
    path = write_questions(tmp_path / "q.jsonl", questions)
    assert [q.to_dict() for q in load_questions(path)] == [q.to_dict() for q in questions]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        (json.dumps({"qid": "a", "question": "x"}), "'uid' or 'title'"),
        (json.dumps({"qid": "a", "question": "", "uid": "u"}), "'question' is required"),
        (json.dumps({"qid": "a", "question": "x", "uid": "u", "must_contain": "Kerr"}), "list of strings"),
        (json.dumps({"qid": "a", "question": "x", "uid": "u", "colour": 1}), "unknown field"),
        (json.dumps({"qid": "a", "question": "{title}", "title": "T"}), "needs a 'uid'"),
    ],
)
def test_question_file_errors_name_file_and_line(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"qid": "ok", "question": "fine", "title": "T"}) + "\n\n" + line + "\n")
    with pytest.raises(QuestionFileError) as info:
        load_questions(path)
    assert f"{path}:3" in str(info.value) and message in str(info.value)


def test_duplicate_qid_is_an_error(tmp_path) -> None:
    path = write_questions(tmp_path / "q.jsonl", [EvalQuestion("a", "x", uid="u"), EvalQuestion("a", "y", uid="v")])
    with pytest.raises(QuestionFileError, match="repeats"):
        load_questions(path)


def test_result_files_leave_out_per_question_records_by_default() -> None:
    from rag.evaluation.cli import _display_path, _strip_records

    payload = {"kind": "ablation", "summary": {}, "questions": [{"question": "catalog text"}],
               "variants": {"base + context": {"summary": {"overall": {}}, "questions": [{"answer": "catalog text"}]}}}
    stripped = _strip_records(payload)
    assert "questions" not in stripped and "questions" not in stripped["variants"]["base + context"]
    assert "catalog text" not in json.dumps(stripped)
    from pathlib import Path

    assert _display_path(str(Path.home() / "x" / "y")) == "~/x/y"
    assert _display_path("/elsewhere/z") == "/elsewhere/z"
