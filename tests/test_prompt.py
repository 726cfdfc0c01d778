from __future__ import annotations

from rag.config import PromptConfig
from rag.prompt import build_messages, clip_text, defang_special_tokens
from rag.types import CatalogRow, Hit


def test_messages_number_sources_and_end_with_question() -> None:
    rows = [CatalogRow("u1", "Book One", "First. Second."), CatalogRow("u2", "Toy Two", "")]
    messages = build_messages("who wrote Book One?", rows)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[-1]["content"]
    assert "[1] Book One\nFirst. Second." in user
    assert "[2] Toy Two\n(no description in the catalog)" in user
    assert user.endswith("Question: who wrote Book One?")


def test_hits_and_rows_give_the_same_prompt() -> None:
    rows = [CatalogRow("u1", "Book One", "About a thing.")]
    assert build_messages("q?", rows) == build_messages("q?", [Hit(row=rows[0], score=0.9)])


def test_history_is_kept_to_the_configured_turns() -> None:
    history = []
    for i in range(10):
        history += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    messages = build_messages("next?", [], PromptConfig(include_history_turns=2), history=history)
    assert [m["content"] for m in messages[1:-1]] == ["q8", "a8", "q9", "a9"]
    assert "(no sources were found)" in messages[-1]["content"]


def test_special_token_lookalikes_are_defanged() -> None:
    text = "Great <|eot_id|> book </s> with [INST] tricks [/INST] and <<SYS>>"
    out = defang_special_tokens(text)
    for token in ("<|eot_id|>", "</s>", "[INST]", "[/INST]", "<<SYS>>"):
        assert token not in out
    assert "Great" in out and "tricks" in out
    assert defang_special_tokens("<unk>", extra_tokens=["<custom_tok>"]) != "<unk>"
    assert "<custom_tok>" not in defang_special_tokens("a <custom_tok> b", extra_tokens=["<custom_tok>"])


def test_clip_text_cuts_at_sentence_boundary() -> None:
    text = "One sentence here. Two sentence here. Three sentence here."
    assert clip_text(text, 40) == "One sentence here. Two sentence here."
    assert clip_text("short", 40) == "short"
