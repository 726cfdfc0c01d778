"""Answer targets fitted to the question kind, held-out products, synthetic extras, token budgets.

.venv/bin/python -m pytest tests/test_finetune_targets.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data import (
    author_name,
    holdout_uids,
    make_answer,
    question_kinds,
)
from rag.config import load_config
from rag.types import CatalogRow

BOOK = CatalogRow(
    "B1",
    "The Salt Road",
    "A sweeping novel by Marta Quillon, first published in 1987. "
    "It follows two sisters across the desert. The book has 312 pages and won the Carnegie Medal.",
)
PLAIN = CatalogRow(
    "B2", "Garden Tools", "A sturdy set of tools for the garden. Each handle is made of ash wood."
)


def test_author_name_finds_the_person_not_a_publisher() -> None:
    assert author_name(BOOK.content) == "Marta Quillon"
    assert author_name("Praised by The New York Times as a gem of the year.") is None
    assert author_name(PLAIN.content) is None


def test_fact_kinds_only_where_the_description_states_them() -> None:
    assert {"author", "when", "count", "award"} <= question_kinds(BOOK.content)
    assert question_kinds(PLAIN.content) == {"describe", "about", "audience"}


def test_who_question_gets_the_name_first_and_cites() -> None:
    config = load_config(None, ["finetune.examples.answer_style=teacher"])
    answer = make_answer(BOOK, 2, "en", config, lambda t: len(t.split()), "Who wrote The Salt Road?")
    assert answer.startswith("Marta Quillon [2]. ")
    assert answer.endswith("[2]")
    described = make_answer(
        BOOK, 2, "en", load_config(None, []), lambda t: len(t.split()), "Who wrote The Salt Road?"
    )
    assert described.startswith("A sweeping novel")  # the old target: the description's first sentences


def test_answer_budget_uses_the_given_token_counter() -> None:
    config = load_config(None, ["finetune.examples.answer_max_tokens=12"])
    words = make_answer(BOOK, 1, "en", config, lambda t: len(t.split()), "Describe The Salt Road.")
    chars = make_answer(BOOK, 1, "en", config, len, "Describe The Salt Road.")
    assert len(words.split()) <= 14  # 12 words, the marker, the cut mark
    assert len(chars) < len(words)  # a stricter counter gives a shorter target


def _catalog(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "catalog.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "uid": f"P{i:03d}",
                        "title": f"Lantern Book Number {i}",
                        "content": f"A book by Ana Rivera{i} Souza about lanterns, volume {i}, from {1950 + i}. "
                        "It has many chapters on light and travel.",
                    }
                )
                + "\n"
            )
    return path


def test_held_out_products_are_never_trained_on_nor_distractors(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    questions = tmp_path / "q.jsonl"
    held = [f"P{i:03d}" for i in range(0, 40, 4)]
    with questions.open("w", encoding="utf-8") as fh:
        for uid in held:
            fh.write(
                json.dumps(
                    {
                        "qid": f"h-{uid}",
                        "question": f"Who wrote {uid}?",
                        "uid": uid,
                        "must_contain": ["x"],
                        "split": "heldout",
                    }
                )
                + "\n"
            )
        fh.write(
            json.dumps(
                {
                    "qid": "t-1",
                    "question": "Who wrote P001?",
                    "uid": "P001",
                    "must_contain": ["x"],
                    "split": "train",
                }
            )
            + "\n"
        )
    assert holdout_uids(questions) == set(held)
    from finetune.train import prepare_data

    config = load_config(
        None,
        [
            f"finetune.data={catalog}",
            f"finetune.examples.holdout_questions={questions}",
            "finetune.examples.retriever=lexical",
            "finetune.examples.per_product=2",
            "finetune.synthetic_extra_rows=30",
        ],
    )
    examples, stats, used = prepare_data(config, tmp_path)
    seen = {e.uid for e in examples} | {row.uid for e in examples for row in e.context}
    assert not seen & set(held)
    assert "P001" in seen
    assert used == tmp_path / "catalog.train.jsonl"
    assert stats["catalog"]["synthetic_extra_rows"] > 0
    assert len(examples) == 2 * stats["rows_selected"]


def test_missing_holdout_file_is_a_config_error(tmp_path: Path) -> None:
    from rag.config import ConfigError

    with pytest.raises(ConfigError, match="finetune.examples.holdout_questions"):
        load_config(None, [f"finetune.examples.holdout_questions={tmp_path / 'nope.jsonl'}"])
    with pytest.raises(ConfigError, match="finetune.examples.per_product"):
        load_config(None, ["finetune.examples.per_product=0"])


def test_cpu_training_has_no_gradient_checkpointing_unless_asked(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from finetune.train import cuda_available, sft_config

    if cuda_available():
        pytest.skip("checks the CPU default")
    default = sft_config(load_config(None, []), tmp_path, "transformers", False)
    explicit = sft_config(
        load_config(None, ["finetune.training.gradient_checkpointing=true"]), tmp_path, "transformers", False
    )
    assert default.gradient_checkpointing is False
    assert explicit.gradient_checkpointing is True


def test_answer_only_loss_equals_the_full_causal_lm_loss(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.train import answer_only_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    input_ids = torch.randint(0, 97, (2, 20))
    labels = input_ids.clone()
    labels[0, :12] = -100  # prompt positions carry no loss
    labels[1, :7] = -100
    labels[1, 15:] = -100
    inputs = {"input_ids": input_ids, "labels": labels}
    full = model(**inputs).loss
    ours, _ = answer_only_loss(model, inputs)
    assert torch.allclose(full, ours, atol=1e-5)
    n = int((labels[:, 1:] != -100).sum())
    summed, _ = answer_only_loss(model, inputs, num_items_in_batch=torch.tensor(2 * n))
    assert torch.allclose(summed * 2, full, atol=1e-5)  # normalised by the accumulation's token count
