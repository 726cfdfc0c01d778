"""Token counting for `usage` and `max_tokens` (rag/tokens.py), and the stop-sequence cutter of the API.

.venv/bin/python -m pytest tests/test_tokens.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.tokens import STATED_TOKENIZER, counter_for, stated_tokenizer, usage
from rag.types import Answer
from tests.test_generators_hf import hf_config, request_for, tiny_model_dir  # noqa: F401 - the fixture


def test_stated_tokenizer_counts_wordpieces_without_truncation() -> None:
    counter = stated_tokenizer()
    assert counter.name == STATED_TOKENIZER
    assert counter.count("Who wrote City of Djinns? [1]") == 11  # who wrote city of dj ##inn ##s ? [ 1 ]
    assert counter.count("word " * 500) == 500  # tokenizer.json caps at 128; a count must not
    assert counter.count("") == 0
    assert counter.count_messages([{"role": "user", "content": "hello there"}]) == 3


def test_truncate_cuts_at_a_token_boundary_of_the_original_text() -> None:
    counter = stated_tokenizer()
    text = "City of Djinns: A Year in Delhi [1]: a travel memoir."
    cut, n, was_cut = counter.truncate(text, 5)
    assert was_cut and n == 5 and cut == "City of Djinns"  # city of dj ##inn ##s
    assert counter.truncate(text, 1000) == (text, counter.count(text), False)


def test_extractive_max_new_tokens_gives_finish_reason_length() -> None:
    from rag.generators.extractive import cut_to_tokens
    from rag.types import GenerationRequest

    request = GenerationRequest(question="q", hits=[], messages=[], max_new_tokens=2)
    text = "Mog's Kittens is a board book."
    cut = cut_to_tokens(request, text)
    assert text.startswith(cut) and stated_tokenizer().count(cut) == 2 < stated_tokenizer().count(text)
    assert (request.finish_reason, request.new_tokens) == ("length", 2)
    request = GenerationRequest(question="q", hits=[], messages=[], max_new_tokens=50)
    assert cut_to_tokens(request, "Short.") == "Short." and request.finish_reason == "stop"


def test_hf_usage_counts_with_the_model_tokenizer(tiny_model_dir: Path) -> None:  # noqa: F811
    from rag.generators.hf import HFGenerator

    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=3))
    request = request_for()
    assert counter_for(generator).count_messages(request.messages) == len(generator._prompt_ids(request))
    text = generator.generate(request)
    answer = Answer(
        question=request.question,
        text=text,
        new_tokens=request.new_tokens,
        prompt_messages=request.messages,
        generator="hf",
    )
    prompt, completion, name = usage(generator, answer)
    assert prompt == len(generator._prompt_ids(request)) and completion == request.new_tokens == 3
    assert name.startswith("hf: ") and str(tiny_model_dir) in name
    assert counter_for(object()) is stated_tokenizer()  # no tokenizer of its own: the stated one


@pytest.mark.parametrize(
    "pieces, stops, sent, stopped",
    [
        (["Eleanor ", "Whitcombe."], ["nor Whit"], "Elea", True),
        (["abc", "def"], ["zz"], "abcdef", False),
        (["a", "b", "STOP", "c"], ["STOP", "b"], "a", True),
        (["xx", "S", "TO", "P yy"], ["STOP"], "xx", True),
    ],
)
def test_stop_cutter_finds_sequences_across_pieces(
    pieces: list[str], stops: list[str], sent: str, stopped: bool
) -> None:
    from api.openai_compat import StopCutter

    cutter = StopCutter(stops)
    out, hit = [], False
    for piece in pieces:
        safe, hit = cutter.feed(piece)
        out.append(safe)
        if hit:
            break
    if not hit:
        out.append(cutter.flush())
    assert "".join(out) == sent and hit == stopped
