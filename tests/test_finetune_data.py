"""Training examples: product split, serving prompt, answers, questions, config files.

.venv/bin/python -m pytest tests/test_finetune_data.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.data import (
    ABSTAIN,
    LexicalRetriever,
    build_examples,
    cut_to_budget,
    drop_one_distractor,
    select_rows,
)
from rag.config import load_config
from rag.prompt import build_messages
from rag.types import CatalogRow

WORDS = [
    "river",
    "stone",
    "garden",
    "lantern",
    "harbor",
    "meadow",
    "copper",
    "violet",
    "thunder",
    "maple",
    "orchard",
    "summit",
]


def _rows(n: int = 120) -> list[CatalogRow]:
    rows = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
        title = f"The {a.title()} {b.title()} Book {i}"
        content = (
            f"A story about the {a} and the {b}, volume {i}. It was written for curious readers. "
            f"Chapter notes cover item {i} in depth. The last part explains the {b} in detail."
        )
        rows.append(CatalogRow(f"U{i:04d}", title, content))
    rows.append(CatalogRow("EMPTY", "No Description Here", ""))
    return rows


def _config(*overrides: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["finetune.examples.validation_fraction=0.2", *overrides])


def test_no_product_in_both_splits() -> None:
    rows = _rows()
    examples, stats = build_examples(rows, _config(), LexicalRetriever(rows))
    train = {e.uid for e in examples if e.split == "train"}
    val = {e.uid for e in examples if e.split == "validation"}
    assert train and val and not train & val
    assert len(val) == pytest.approx(0.2 * len(examples), abs=1)
    assert "EMPTY" not in train | val  # rows without a description teach nothing
    assert stats["split_products"]["validation"] == len(val)


def test_training_prompt_is_the_serving_prompt() -> None:
    rows = _rows()
    config = _config("prompt.max_chars_per_source=120")
    examples, _ = build_examples(rows, config, LexicalRetriever(rows))
    for e in examples[:20]:
        # what rag.pipeline sends for this question and these retrieved rows
        assert e.messages == build_messages(e.question, e.context, config.prompt)
        assert e.messages[0]["content"] == config.prompt.system
        assert e.question in e.messages[-1]["content"]


def test_gold_probability_and_answers() -> None:
    rows = _rows(200)
    config = _config("finetune.examples.gold_probability=0.7", "finetune.examples.context_k=3")
    examples, stats = build_examples(rows, config, LexicalRetriever(rows))
    with_gold = [e for e in examples if e.gold_position is not None]
    assert 0.55 < len(with_gold) / len(examples) < 0.85
    positions = {e.gold_position for e in with_gold}
    assert positions == {1, 2, 3}  # the gold row is shuffled among the distractors
    by_uid = {r.uid: r for r in rows}
    for e in examples:
        assert len(e.context) == 3
        assert len({r.uid for r in e.context}) == 3
        if e.gold_position is None:
            assert e.uid not in {r.uid for r in e.context}
            assert e.answer == ABSTAIN[e.language].format(title=by_uid[e.uid].title)
        else:
            assert e.context[e.gold_position - 1].uid == e.uid
            assert e.answer.endswith(f" [{e.gold_position}]")
            assert by_uid[e.uid].content.startswith(e.answer[: -len(f" [{e.gold_position}]")].rstrip(" …"))
    assert stats["gold_in_context"] == len(with_gold)


def test_questions_include_portuguese() -> None:
    rows = _rows(200)
    examples, stats = build_examples(
        rows, _config("finetune.examples.portuguese_fraction=0.5"), LexicalRetriever(rows)
    )
    assert 60 < stats["languages"]["pt"] < 140
    pt = [e.question for e in examples if e.language == "pt"]
    assert any(q.startswith("Do que se trata o livro") for q in pt)
    assert any(q.startswith("Quem escreveu") for q in pt)
    assert set(stats["question_kinds"]) == {"describe", "about", "audience", "author"}


def test_cut_to_budget_at_sentence_boundary() -> None:
    text = "One two three. Four five six seven. Eight nine ten eleven twelve."

    def count(s: str) -> int:
        return len(s.split())

    assert cut_to_budget(text, 100, count) == text
    assert cut_to_budget(text, 8, count) == "One two three. Four five six seven."
    assert cut_to_budget(text, 3, count) == "One two three."
    assert cut_to_budget("a b c d e f", 4, count) == "a b c …"


def test_drop_distractor_keeps_citation_right() -> None:
    rows = _rows()
    config = _config("finetune.examples.gold_probability=1.0", "finetune.examples.context_k=3")
    examples, _ = build_examples(rows, config, LexicalRetriever(rows))
    e = next(x for x in examples if x.gold_position == 3)
    smaller = drop_one_distractor(e, config)
    assert smaller is not None and len(smaller.context) == 2
    assert smaller.context[smaller.gold_position - 1].uid == e.uid
    assert smaller.answer.endswith(f"[{smaller.gold_position}]")
    assert smaller.messages == build_messages(e.question, smaller.context, config.prompt)


def test_selection_is_deterministic_and_bounded() -> None:
    rows = _rows()
    config = _config("finetune.examples.sample_size=10", "finetune.examples.min_content_chars=10")
    first = [r.uid for r in select_rows(rows, config)]
    again = [r.uid for r in select_rows(list(reversed(rows)), config)]
    assert first == again and len(first) == 10


def test_shipped_configs_validate() -> None:
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    names = {p.name for p in configs}
    assert {"tiny-cpu.yaml", "tinyllama-qlora.yaml", "llama3-8b-qlora.yaml", "mistral-7b-qlora.yaml"} <= names
    for path in configs:
        load_config(path)
        assert path.read_text(encoding="utf-8").startswith("#"), f"{path.name} must begin with its command"


def test_bad_finetune_values_are_reported_together() -> None:
    from rag.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(
            None, ["finetune.lora.r=0", "finetune.examples.gold_probability=1.5", "finetune.lora.rank=8"]
        )
    text = str(info.value)
    assert (
        "finetune.lora.r" in text and "gold_probability" in text and "finetune.lora.rank: unknown key" in text
    )
