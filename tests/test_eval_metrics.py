"""Unit tests of the evaluation metrics and question files (no index, no model).

.venv/bin/python -m pytest tests/test_eval_metrics.py -q
"""

from __future__ import annotations

import json
import math

import pytest

from rag.evaluation.metrics import (
    contains_all,
    contains_share,
    lcs_length,
    mrr,
    must_contain,
    needles_to_check,
    percentile,
    recall_at_k,
    rouge_l,
)
from rag.evaluation.questions import (
    KINDS,
    EvalQuestion,
    QuestionFileError,
    generate_questions,
    load_questions,
    render_question,
    truncate_title,
    typo_title,
    write_questions,
)
from rag.evaluation.runner import ResolvedQuestion, answer_record, answers_table, summarise_answers
from rag.types import Answer, CatalogRow, Source


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
    assert lcs_length(["a", "b", "c", "d", "e"], ["a", "x", "c", "y", "e"]) == 3
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
    assert (
        truncate_title("The Long Ships and the Sea Kings") == "The Long Ships and the"
    )  # ceil(0.6 * 7) = 5 words
    assert truncate_title("Flux") == ""
    typo = typo_title("The Lighthouse Keeper's Daughter", seed=3)
    assert typo != "The Lighthouse Keeper's Daughter" and typo == typo_title(
        "The Lighthouse Keeper's Daughter", seed=3
    )
    assert all(
        a[0] == b[0]
        for a, b in zip(typo.split(), ["The", "Lighthouse", "Keeper's", "Daughter"], strict=False)
    )
    assert render_question("Quem escreveu {title:lower}?", "Mog's Kittens") == "Quem escreveu mog's kittens?"
    assert render_question("{title:trunc}", "City of Djinns: A Year in Delhi") == "City of Djinns"


def _rows(n: int) -> list[CatalogRow]:
    words = [
        "Lantern",
        "Harbour",
        "Winter",
        "Garden",
        "Falcon",
        "River",
        "Copper",
        "Meadow",
        "Orchard",
        "Signal",
    ]
    rows = [
        CatalogRow(
            uid=f"u{i}",
            title=f"The {words[i % 10]} of {words[(i * 3 + 1) % 10]}: Book {i} of the Series",
            content=f"Description {i}.",
            line=i + 1,
        )
        for i in range(n)
    ]
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
    path = write_questions(
        tmp_path / "q.jsonl", [EvalQuestion("a", "x", uid="u"), EvalQuestion("a", "y", uid="v")]
    )
    with pytest.raises(QuestionFileError, match="repeats"):
        load_questions(path)


def test_result_files_leave_out_per_question_records_by_default() -> None:
    from rag.evaluation.cli import _display_path, _strip_records

    payload = {
        "kind": "ablation",
        "summary": {},
        "questions": [{"question": "catalog text"}],
        "variants": {
            "base + context": {"summary": {"overall": {}}, "questions": [{"answer": "catalog text"}]}
        },
    }
    stripped = _strip_records(payload)
    assert "questions" not in stripped and "questions" not in stripped["variants"]["base + context"]
    assert "catalog text" not in json.dumps(stripped)
    from pathlib import Path

    assert _display_path(str(Path.home() / "x" / "y")) == "~/x/y"
    assert _display_path("/elsewhere/z") == "/elsewhere/z"


# --------------------------------------------------------------------------- honest answer metrics (issue 18)

GOLD = CatalogRow(
    "h:gold",
    "City of Djinns: A Year in Delhi",
    "A travel memoir by William Dalrymple. The author spends a year living in Delhi.",
)
OTHER = Source("h:other", "Mog's Kittens", 0.5, "A board book by Judith Kerr.")
GOLD_SOURCE = Source(GOLD.uid, GOLD.title, 0.9, GOLD.content)


def _item(
    question: str = "a travel book about a year in Delhi",
    *,
    uid: str | None = GOLD.uid,
    kind: str = "described",
    must: list[str] | None = None,
    language: str | None = None,
) -> ResolvedQuestion:
    q = EvalQuestion("q", question, uid=uid, kind=kind, must_contain=must or [], language=language)
    return ResolvedQuestion(q, question, uid, None, GOLD if uid else None)


def _answer(
    text: str,
    sources: list[Source],
    *,
    found: bool = True,
    unsupported: list[str] | None = None,
    finish_reason: str | None = None,
) -> Answer:
    answer = Answer(
        question="q", text=text, sources=sources, found=found, unsupported_sentences=unsupported or []
    )
    if finish_reason is not None:
        answer.finish_reason = finish_reason  # type: ignore[attr-defined]  # the field may not exist yet
    return answer


def _record(item: ResolvedQuestion, answer: Answer):  # type: ignore[no-untyped-def]
    return answer_record(item, answer, 0.1, use_context=True)


def test_must_contain_ignores_facts_the_question_already_states() -> None:
    question = "a travel book about a year spent living in Delhi"
    assert needles_to_check(question, ["DELHI", "Dalrymple", " "]) == ["Dalrymple"]
    assert must_contain(f"The sources do not describe {question}.", ["Delhi"], question) is None  # skipped
    assert must_contain(f"The sources do not describe {question}.", ["Delhi", "Dalrymple"], question) is False
    assert must_contain("A memoir by Dalrymple [1].", ["Delhi", "Dalrymple"], question) is True
    assert must_contain(f"Repeating {question}.", ["Delhi"]) is True  # without the question: the old check
    assert must_contain("anything", []) is None


def test_an_answer_repeating_the_question_does_not_pass_must_contain() -> None:
    question = "a travel book about a year spent living in Delhi"
    echo = _answer(f"The sources do not describe {question}.", [GOLD_SOURCE])
    skipped = _record(_item(question, must=["Delhi"]), echo)
    assert skipped.contains is None and skipped.must_skipped and skipped.must_checked == []
    failed = _record(_item(question, must=["Delhi", "Dalrymple"]), echo)
    assert failed.contains is False and failed.must_checked == ["Dalrymple"] and not failed.must_skipped
    summary = summarise_answers([skipped, failed])["overall"]
    assert (
        summary["must_contain"] == 0.0 and summary["n_must_contain"] == 1 and summary["n_must_skipped"] == 1
    )


def test_cites_expected_reads_the_answers_own_markers() -> None:
    item = _item()
    no_marker = _record(
        item, _answer("City of Djinns: a travel memoir by William Dalrymple.", [GOLD_SOURCE, OTHER])
    )
    assert no_marker.retrieved_expected is True  # retrieval did its part ...
    assert (
        no_marker.cites_expected is False and no_marker.cites_first is False
    )  # ... the answer cites nothing
    right = _record(item, _answer("A travel memoir by William Dalrymple [1].", [GOLD_SOURCE, OTHER]))
    assert right.cites_expected and right.cites_first
    second = _record(item, _answer("By Judith Kerr [1]; or a memoir by Dalrymple [2].", [OTHER, GOLD_SOURCE]))
    assert second.cites_expected and not second.cites_first  # the first [n] is the wrong row
    wrong = _record(item, _answer("A board book by Judith Kerr [2].", [GOLD_SOURCE, OTHER]))
    assert not wrong.cites_expected and not wrong.cites_first
    beyond = _record(item, _answer("A memoir [7].", [GOLD_SOURCE]))
    assert not beyond.cites_expected
    missing = _record(item, _answer("A board book [1].", [OTHER]))
    assert missing.retrieved_expected is False and missing.cites_expected is False
    summary = summarise_answers([no_marker, right, second, wrong])["overall"]
    assert (
        summary["cites_expected"] == 0.5
        and summary["cites_first"] == 0.25
        and summary["retrieved_expected"] == 1.0
    )


def test_a_wrong_refusal_is_neither_grounded_nor_a_right_abstention() -> None:
    item = _item()
    refusal = _record(item, _answer("The sources do not describe the sources.", [GOLD_SOURCE, OTHER]))
    assert refusal.abstained and refusal.false_abstention is True and refusal.grounded is False
    pt = _record(item, _answer("As fontes não descrevem City of Djinns.", [GOLD_SOURCE]))
    assert pt.abstained and pt.false_abstention and not pt.grounded
    # the expected row was not given: refusing is right, and the refusal is not counted as false
    honest = _record(item, _answer("The sources do not describe a travel book about Delhi.", [OTHER]))
    assert honest.abstained and honest.false_abstention is None and honest.grounded is True
    answered = _record(item, _answer("A travel memoir by William Dalrymple [1].", [GOLD_SOURCE]))
    assert not answered.abstained and answered.false_abstention is False and answered.grounded
    empty = _record(item, _answer("", [GOLD_SOURCE]))
    assert empty.grounded is False and not empty.abstained
    summary = summarise_answers([refusal, pt, honest, answered])["overall"]
    assert summary["abstained"] == 0.75
    assert summary["false_abstention"] == pytest.approx(2 / 3) and summary["n_expected_in_sources"] == 3
    assert summary["grounded"] == 0.5


def test_absent_questions_load_without_a_uid_and_count_abstentions(tmp_path) -> None:
    path = tmp_path / "absent.jsonl"
    lines = [
        {
            "qid": "a1",
            "question": "who wrote The Glass Orchard of Vinmoor?",
            "kind": "absent",
            "language": "en",
        },
        {"qid": "a2", "question": "quem escreveu O Pomar de Vidro?", "kind": "absent", "language": "pt"},
        {"qid": "a3", "question": "what is Zanzibar Clockworks about?", "kind": "absent", "language": "en"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    questions = load_questions(path)
    assert all(q.uid is None and q.title is None and q.is_absent for q in questions)
    assert [q.language for q in questions] == ["en", "pt", "en"]

    class NoRows:
        def get_by_uid(self, uid):  # type: ignore[no-untyped-def]
            raise AssertionError("an absent question has no uid to look up")

    from rag.evaluation.runner import resolve_questions

    items = resolve_questions(questions, NoRows(), warn=lambda _m: None)
    assert all(not item.has_expected for item in items)
    records = [
        _record(items[0], _answer("The sources do not describe The Glass Orchard of Vinmoor.", [OTHER])),
        _record(items[1], _answer("Não encontrei.", [], found=False)),
        _record(items[2], _answer("Mog's Kittens is a board book by Judith Kerr [1].", [OTHER])),
    ]
    assert [r.absent_abstained for r in records] == [True, True, False]
    assert all(
        r.cites_expected is None and r.retrieved_expected is None and r.false_abstention is None
        for r in records
    )
    summary = summarise_answers(records)
    assert summary["absent"]["abstention_rate"] == pytest.approx(2 / 3) and summary["absent"]["n_absent"] == 3
    assert summary["lang:en"]["n"] == 2 and summary["lang:pt"]["abstention_rate"] == 1.0
    assert list(summary) == ["absent", "lang:en", "lang:pt", "overall"]
    # an answer to a named question is not counted in the absent rate
    assert math.isnan(
        summarise_answers([_record(_item(), _answer("x", [GOLD_SOURCE]))])["overall"]["abstention_rate"]
    )


@pytest.mark.parametrize(
    "line",
    [
        {"qid": "a", "question": "who wrote Nothing?", "kind": "absent", "uid": "h:1"},
        {"qid": "a", "question": "who wrote Nothing?", "kind": "absent", "title": "Nothing"},
    ],
)
def test_an_absent_question_naming_a_product_is_an_error(tmp_path, line) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(QuestionFileError, match="names no product"):
        load_questions(path)


def test_stop_rate_comes_from_finish_reason() -> None:
    item = _item()
    records = [
        _record(item, _answer("A memoir by Dalrymple [1].", [GOLD_SOURCE], finish_reason=reason))
        for reason in ("stop", "length", "stop", None)
    ]
    assert [r.stopped for r in records] == [True, False, True, None]
    summary = summarise_answers(records)["overall"]
    assert summary["stop_rate"] == pytest.approx(2 / 3) and summary["n_stop"] == 3
    assert math.isnan(summarise_answers(records[3:])["overall"]["stop_rate"])  # unknown: n/a, not 1.0


def test_split_and_language_fields_round_trip_and_filter(tmp_path) -> None:
    from rag.cli import UsageError
    from rag.evaluation.cli import filter_questions

    questions = [
        EvalQuestion("a", "x", uid="u1", kind="exact", split="test", language="en"),
        EvalQuestion("b", "y", uid="u2", kind="typo", split="train", language="pt"),
        EvalQuestion("c", "z", uid="u3", kind="typo", split="test"),
    ]
    loaded = load_questions(write_questions(tmp_path / "q.jsonl", questions))
    assert [(q.split, q.language) for q in loaded] == [("test", "en"), ("train", "pt"), ("test", None)]
    assert [q.qid for q in filter_questions(loaded, split="test")] == ["a", "c"]
    assert [q.qid for q in filter_questions(loaded, split="test", kinds="typo,absent")] == ["c"]
    assert [q.qid for q in filter_questions(loaded, kinds="typo")] == ["b", "c"]
    with pytest.raises(UsageError, match="--split dev"):
        filter_questions(loaded, split="dev")


def test_answers_table_shows_the_new_columns_and_reads_old_summaries() -> None:
    item = _item(must=["Delhi"])
    records = [_record(item, _answer("The sources do not describe the sources.", [GOLD_SOURCE]))]
    table = answers_table(summarise_answers(records))
    head = table.splitlines()[0]
    for column in (
        "must_contain (n, skipped)",
        "cites expected",
        "cites expected [1]",
        "retrieved expected",
        "ROUGE-L",
        "grounded",
        "abstained",
        "false abstention",
        "absent: abstains",
        "stop rate",
        "p50 s",
        "p95 s",
    ):
        assert f"| {column} |" in head
    assert "| described | 1 | n/a (0, 1 skipped) | 0.000 | 0.000 | 1.000 |" in table
    old = {
        "overall": {
            "n": 3,
            "must_contain": 0.5,
            "n_must_contain": 2,
            "cites_expected": 1.0,
            "cites_first": 1.0,
            "rouge_l": 0.4,
            "n_rouge": 3,
            "grounded": 1.0,
            "p50_s": 0.1,
            "p95_s": 0.2,
        }
    }
    assert (
        "| **overall** | 3 | 0.500 (2, 0 skipped) | 1.000 | 1.000 | n/a | 0.400 (3) | 1.000 | n/a |"
        in answers_table(old)
    )
