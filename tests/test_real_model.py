"""The real SmolLM2-135M-Instruct through the `hf` backend: ChatML, streaming, stopping at <|im_end|>.

    make model && .venv/bin/python -m pytest tests/test_real_model.py -q

The model is pulled once by `make model` (which `make test` and .ci/run run first); where it has not
been pulled these tests skip and say how to pull it.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from rag.config import Config, GeneratorConfig
from rag.models import is_pulled, model_path
from rag.prompt import build_messages
from rag.types import CatalogRow, GenerationRequest, Hit

NAME = "smollm2-135m"
pytestmark = pytest.mark.skipif(
    not is_pulled(NAME),
    reason=f"the real model is not pulled into {model_path(NAME)}: run `make model` (rag model pull {NAME})",
)

ROW = CatalogRow("R1", "The Salt Road", "A novel by Marta Quillon about two sisters crossing the desert.")


@pytest.fixture(scope="module")
def generator() -> Any:
    from rag.generators.hf import HFGenerator

    gen = HFGenerator(
        Config(generator=GeneratorConfig(backend="hf", model=NAME, device="cpu", max_new_tokens=48))
    )
    gen.warm_up()
    return gen


def _request(question: str, hits: list[Hit], **kw: Any) -> GenerationRequest:
    return GenerationRequest(question=question, hits=hits, messages=build_messages(question, hits), **kw)


def test_decoding_prints_no_tokenizer_warning(generator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The GGUF-converted BPE tokenizer must not carry clean_up_tokenization_spaces, which transformers
    ignores for a BPE with a warning on each decode (shown to every `rag ask` user)."""
    assert generator.tokenizer.clean_up_tokenization_spaces is False
    generator.tokenizer.decode(generator.tokenizer("a b, c.")["input_ids"])
    assert "clean_up_tokenization_spaces" not in capsys.readouterr().err


def test_the_known_name_resolves_to_the_pulled_chatml_model(generator: Any) -> None:
    tok = generator.tokenizer
    assert generator.model_name == str(model_path(NAME))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"  # fixed at conversion
    assert tok.convert_tokens_to_ids("<|im_end|>") in generator.stop_ids
    assert sum(p.numel() for p in generator.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompt = generator.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_a_short_answer_stops_at_im_end_before_the_budget(generator: Any) -> None:
    request = _request("Reply with one word: is the sky blue?", [])
    text = generator.generate(request)
    assert request.finish_reason == "stop", text
    assert 0 < request.new_tokens < 48
    assert "<|im_end|>" not in text and "<|im_start|>" not in text
    # nothing was generated after the end token: the text is all the new tokens but that one
    assert len(generator.tokenizer(text, add_special_tokens=False)["input_ids"]) <= request.new_tokens


def test_streaming_yields_the_same_answer_piece_by_piece(generator: Any) -> None:
    hits = [Hit(row=ROW, score=0.9)]
    request = _request("Who wrote The Salt Road?", hits)
    pieces = list(generator.stream(request))
    assert len(pieces) >= 2
    streamed = "".join(pieces).strip()
    again = _request("Who wrote The Salt Road?", hits)
    assert streamed == generator.generate(again).strip()  # greedy: the same text either way
    assert request.finish_reason in ("stop", "length") and request.new_tokens > 0
    assert "<|im_end|>" not in streamed
    assert not [t for t in threading.enumerate() if t.name == "hf-generate"]


def test_no_bitsandbytes_for_a_model_this_small(generator: Any) -> None:
    assert not getattr(generator.model, "is_loaded_in_4bit", False)
    assert "bitsandbytes" not in type(generator.model).__module__


def test_batched_answers_equal_one_at_a_time(generator: Any) -> None:
    """Left-padded batches of different prompt lengths give the greedy answers of single requests."""
    other = CatalogRow(
        "R2", "Seven Small Owls", "A picture book for ages 3 to 5 about owls who learn to count."
    )
    asks = [
        ("Who wrote The Salt Road?", [Hit(row=ROW, score=0.9)]),
        ("For what ages is Seven Small Owls?", [Hit(row=other, score=0.9), Hit(row=ROW, score=0.4)]),
        ("What is The Salt Road about?", [Hit(row=ROW, score=0.9), Hit(row=other, score=0.3)]),
    ]
    alone = [generator.generate(_request(q, h, max_new_tokens=24)) for q, h in asks]
    batch = [_request(q, h, max_new_tokens=24) for q, h in asks]
    assert generator.generate_batch(batch, batch_size=3) == alone
    assert all(r.new_tokens and r.finish_reason in ("stop", "length") for r in batch)
