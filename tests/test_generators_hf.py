"""The `hf` backend on a tiny random-init Llama (+ LoRA adapter): loading, stop tokens, streaming,
errors, and end to end through `rag.answer` and the chat REPL.

    .venv/bin/python -m pytest tests/test_generators_hf.py -q

Random weights write gibberish, so tests that check the answer text force the model's choices
with a forward hook that rewrites the logits (a scripted "model"); the generator's own code —
chat template, generate(), stop ids, streaming thread, decoding — runs unchanged.
"""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.config import Config, GeneratorConfig
from rag.generators import make_generator
from rag.generators.common import (
    MAX_NEW_TOKENS_CAP,
    GeneratorError,
    fallback_prompt,
    render_prompt,
    resolve_sampling,
    stop_token_ids,
)
from rag.generators.hf import HFGenerator
from rag.prompt import build_messages
from rag.types import GenerationRequest, Hit

pytestmark = pytest.mark.integration

ANSWER = "A travel memoir by William Dalrymple [1]."
AFTER_STOP = " This text comes after the stop token and must never appear."


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter saved by peft's save_pretrained, as the fine-tuning pipeline writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: non-zero B matrices, so the adapter visibly changes the logits.
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def hf_config(model: Path | None, adapter: Path | None = None, **generator: Any) -> Config:
    values = {
        "backend": "hf",
        "model": str(model) if model else None,
        "adapter": str(adapter) if adapter else None,
        "max_new_tokens": 24,
        "device": "cpu",
    }
    values.update(generator)
    return Config(generator=GeneratorConfig(**values))


def request_for(
    question: str = "who wrote City of Djinns?", hits: list[Hit] | None = None, **kw: Any
) -> GenerationRequest:
    hits = hits or []
    return GenerationRequest(question=question, hits=hits, messages=build_messages(question, hits), **kw)


class Script:
    """Forward hook that makes the model emit `tokens` (one per step) whatever its weights say."""

    def __init__(self, model: Any, tokens: list[int]) -> None:
        self.tokens = tokens
        self.step = 0
        self.calls = 0
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and input_ids.shape[1] > 1:
            self.step = 0  # a prefill starts a new generation
        token = self.tokens[min(self.step, len(self.tokens) - 1)]
        logits = output.logits
        logits[:, -1, :] = -1e4
        logits[:, -1, token] = 1e4
        self.step += 1
        self.calls += 1
        return output


def scripted(generator: HFGenerator, text_before_stop: str, stop_id: int | None = None) -> Script:
    """Script `text_before_stop`, then the stop token (default: eos), then text that must not appear."""
    generator.warm_up()
    tok = generator.tokenizer
    stop_id = tok.eos_token_id if stop_id is None else stop_id
    before = tok(text_before_stop, add_special_tokens=False)["input_ids"]
    after = tok(AFTER_STOP, add_special_tokens=False)["input_ids"]
    return Script(generator.model, [*before, stop_id, *after])


# --------------------------------------------------------------------------- helpers in common.py


def test_sampling_caps_and_greedy() -> None:
    config = GeneratorConfig(max_new_tokens=64, temperature=0.0, top_p=1.0)
    s = resolve_sampling(config, request_for(max_new_tokens=10**6, temperature=9.0, top_p=0.0))
    assert s.max_new_tokens == MAX_NEW_TOKENS_CAP and s.temperature == 2.0 and s.top_p == 0.01
    s = resolve_sampling(config, request_for(max_new_tokens=-5))
    assert s.max_new_tokens == 1 and s.greedy and s.repetition_penalty == pytest.approx(1.15)
    assert resolve_sampling(config, request_for()).max_new_tokens == 64  # request None -> config


def test_stop_ids_cover_eos_and_end_of_turn_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert stop_token_ids(tok) == [tok.eos_token_id]
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|eot_id|>"]})
    ids = stop_token_ids(tok)
    assert ids[0] == tok.eos_token_id
    assert set(ids) == {
        tok.eos_token_id,
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.convert_tokens_to_ids("<|eot_id|>"),
    }


def test_render_prompt_with_template_fallback_and_system_refusal(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = build_messages("who wrote it?", [])
    text, templated = render_prompt(tok, messages)
    assert templated and text.startswith("<s><|system|>\n") and text.endswith("<|assistant|>\n")
    tok.chat_template = None
    text, templated = render_prompt(tok, messages)
    assert not templated and text == fallback_prompt(messages) and text.endswith("### Assistant:\n")
    # A template that refuses the system role (like old Mistral ones) gets it folded into the user turn.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "[INST] {{ m['content'] }} [/INST]{% endfor %}"
    )
    text, templated = render_prompt(tok, messages)
    assert (
        templated and text.count("[INST]") == 1 and messages[0]["content"] in text and "who wrote it?" in text
    )


# --------------------------------------------------------------------------- the backend


def test_factory_builds_the_hf_backend_lazily(tiny_model_dir: Path) -> None:
    generator = make_generator(hf_config(tiny_model_dir))
    assert isinstance(generator, HFGenerator) and generator.name == "hf"
    assert generator.model is None  # nothing loaded before the first request or warm_up()
    assert generator._load_kwargs() == {"local_files_only": True, "trust_remote_code": False}


def test_generate_is_greedy_deterministic_and_bounded(tiny_model_dir: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=12))
    first = generator.generate(request_for())
    assert first == generator.generate(request_for())
    assert 0 < generator.last_stats["new_tokens"] <= 12
    generator.generate(request_for(max_new_tokens=3))
    assert generator.last_stats["new_tokens"] <= 3


def test_generation_stops_at_eos(tiny_model_dir: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=64))
    script = scripted(generator, ANSWER)
    assert generator.generate(request_for()) == ANSWER
    n_answer = len(generator.tokenizer(ANSWER, add_special_tokens=False)["input_ids"])
    assert script.calls == n_answer + 1  # the answer's tokens, then eos, then nothing more
    assert "".join(generator.stream(request_for())).strip() == ANSWER
    script.handle.remove()


def test_generation_stops_at_an_end_of_turn_token_that_is_not_eos(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Llama-3/ChatML style: the turn ends with <|im_end|>, a token distinct from eos."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path / "chatml"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    generator = HFGenerator(hf_config(model_dir, max_new_tokens=64))
    generator.warm_up()
    im_end = generator.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end != generator.tokenizer.eos_token_id and im_end in generator.stop_ids
    scripted(generator, ANSWER, im_end)
    assert generator.generate(request_for()) == ANSWER
    assert "".join(generator.stream(request_for())).strip() == ANSWER


def test_adapter_is_loaded_and_changes_the_model(tiny_model_dir: Path, tiny_adapter_dir: Path) -> None:
    import torch

    base = HFGenerator(hf_config(tiny_model_dir))
    tuned = HFGenerator(hf_config(tiny_model_dir, tiny_adapter_dir))
    only_adapter = HFGenerator(hf_config(None, tiny_adapter_dir))  # base named by adapter_config.json
    assert only_adapter.model_name == str(tiny_model_dir)
    for g in (base, tuned, only_adapter):
        g.warm_up()
    inputs = base._encode(request_for())
    with torch.no_grad():
        logits = [g.model(**inputs).logits[0, -1] for g in (base, tuned, only_adapter)]
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)  # the LoRA weights are applied
    assert torch.allclose(logits[1], logits[2], atol=1e-5)


def reference_generate(generator: HFGenerator, request: GenerationRequest) -> str:
    """transformers' own `model.generate` with the backend's settings and processors."""
    generator.warm_up()
    sampling = resolve_sampling(generator.config.generator, request)
    inputs = generator._encode(request)
    output = generator._run_generate(inputs, sampling)
    text, n, stopped = generator._decode_new(output, inputs["input_ids"].shape[1])
    request.new_tokens, request.finish_reason = (
        n,
        "stop" if stopped or n < sampling.max_new_tokens else "length",
    )
    return text


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
        {"repetition_penalty": 1.0, "max_new_tokens": 40},
        {"end_boost_after": 3, "end_boost_rate": 1.6, "max_new_tokens": 40},
    ],
)
def test_stream_pieces_make_the_generated_text(tiny_model_dir: Path, settings: dict[str, Any]) -> None:
    """Greedy: the streamed text (the backend's token loop) is transformers' generate() text, token
    for token, with the same counts."""
    generator = HFGenerator(hf_config(tiny_model_dir, **{"max_new_tokens": 16, **settings}))
    for request in _varied_requests()[:3]:
        streamed = request_for(request.question, request.hits)
        pieces = list(generator.stream(streamed))
        assert len(pieces) >= 2
        whole = request_for(request.question, request.hits)
        assert (
            "".join(pieces).strip()
            == reference_generate(generator, whole)
            == generator.generate(request_for(request.question, request.hits))
        )
        assert (streamed.new_tokens, streamed.finish_reason) == (whole.new_tokens, whole.finish_reason)
    assert not [t for t in threading.enumerate() if t.name == "hf-generate"]


def test_stream_propagates_exceptions_mid_answer(tiny_model_dir: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=20))
    generator.warm_up()
    script = Script(generator.model, generator.tokenizer(" word", add_special_tokens=False)["input_ids"])

    def broken(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        if script.calls >= 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return output

    handle = generator.model.register_forward_hook(broken, with_kwargs=True)
    received = []
    with pytest.raises(RuntimeError, match="simulated"):
        for piece in generator.stream(request_for()):  # one by one: the pieces before the failure stay
            received.append(piece)  # noqa: PERF402
    assert "".join(received).strip().startswith("word")  # what came before the failure was delivered
    handle.remove()
    script.handle.remove()


def _static_path(
    generator: HFGenerator, monkeypatch: pytest.MonkeyPatch, compile: bool = False, overlap: bool = False
) -> None:
    """Route `generate`/`stream` through the static-cache loop that generator.compile uses on CUDA."""
    from rag.generators.static_decode import StaticDecoder

    generator.warm_up()
    generator._static = StaticDecoder(
        generator.model, compile=compile, compile_mode="reduce-overhead", overlap=overlap
    )
    monkeypatch.setattr(generator, "_compiled", lambda: True)


@pytest.mark.parametrize("overlap", [False, True], ids=["in-order", "overlapped"])
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
        {"repetition_penalty": 1.0, "max_new_tokens": 40},
        {"end_boost_after": 3, "end_boost_rate": 1.6, "max_new_tokens": 40},
    ],
)
def test_static_cache_loop_gives_generate_text(
    tiny_model_dir: Path, settings: dict[str, Any], overlap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generator.compile path (static KV cache, one-token step, penalty and n-gram ban kept
    incrementally) decodes generate()'s tokens under greedy decoding, streamed or not, with the same
    counts; requests of different lengths reuse one cache (reset in place, no leftovers). "overlapped"
    is the CUDA order (each token's forward queued before the token is read back), run here on CPU."""
    config = {"max_new_tokens": 16, **settings}
    plain = HFGenerator(hf_config(tiny_model_dir, **config))
    static = HFGenerator(hf_config(tiny_model_dir, **config))
    _static_path(static, monkeypatch, overlap=overlap)
    for request in _varied_requests()[:4]:
        expected = request_for(request.question, request.hits)
        text = reference_generate(plain, expected)
        whole = request_for(request.question, request.hits)
        assert static.generate(whole) == text
        streamed = request_for(request.question, request.hits)
        assert "".join(static.stream(streamed)).strip() == text
        assert (
            (whole.new_tokens, whole.finish_reason)
            == (streamed.new_tokens, streamed.finish_reason)
            == (expected.new_tokens, expected.finish_reason)
        )
    assert len(static._static._caches) == 1


@pytest.mark.parametrize("overlap", [False, True], ids=["in-order", "overlapped"])
def test_static_cache_loop_honours_min_new_tokens_and_closing(
    tiny_model_dir: Path, overlap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=24))
    _static_path(generator, monkeypatch, overlap=overlap)
    generator.min_new_tokens = 24  # what the benchmark sets: no early stop
    request = request_for()
    generator.generate(request)
    assert (request.new_tokens, request.finish_reason) == (24, "length")
    stream = generator.stream(request_for())
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    generator.min_new_tokens = 0
    again = request_for()
    assert generator.generate(again) == HFGenerator(hf_config(tiny_model_dir, max_new_tokens=24)).generate(
        request_for()
    )


def test_ngram_ban_matches_the_answer_blocker() -> None:
    """The incremental table bans exactly what answer_ngram_blocker bans, step by step."""
    import random

    import torch

    from rag.generators.hf import answer_ngram_blocker
    from rag.generators.static_decode import NgramBan

    rng = random.Random(3)
    for size in (1, 2, 3, 4):
        ban, blocker = NgramBan(size), answer_ngram_blocker(size, prompt_length=2)
        answer: list[int] = []
        for _ in range(60):
            scores = blocker(torch.tensor([[7, 7, *answer]]), torch.zeros((1, 6)))
            assert sorted(torch.nonzero(scores[0] == -torch.inf).flatten().tolist()) == ban.banned()
            token = rng.randrange(6)
            answer.append(token)
            ban.add(token)


@pytest.mark.slow
def test_compiled_static_step_on_cpu_gives_generate_text(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile of the one-token step (inductor on the CPU; CUDA graphs on a GPU) changes no token."""
    plain = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=12))
    compiled = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=12))
    _static_path(compiled, monkeypatch, compile=True)
    for request in _varied_requests()[:2]:
        assert compiled.generate(request_for(request.question, request.hits)) == plain.generate(
            request_for(request.question, request.hits)
        )


def test_closing_the_stream_early_stops_generation(tiny_model_dir: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=200))
    generator.warm_up()
    script = Script(generator.model, generator.tokenizer(" word", add_special_tokens=False)["input_ids"])
    stream: Iterator[str] = generator.stream(request_for())
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert not [t for t in threading.enumerate() if t.name == "hf-generate"]
    assert script.calls < 200  # cancelled long before max_new_tokens
    script.handle.remove()


def test_missing_model_and_bad_adapter_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match=r"generator\.model: not set"):
        HFGenerator(hf_config(None))
    with pytest.raises(GeneratorError, match=r"generator\.adapter: .* is not a directory"):
        HFGenerator(hf_config(tmp_path, tmp_path / "nope"))
    with pytest.raises(GeneratorError, match="has no adapter_config.json"):
        HFGenerator(hf_config(tmp_path, tmp_path))
    generator = HFGenerator(hf_config(Path("no-such-org/no-such-model")))
    with pytest.raises(GeneratorError) as info:
        generator.warm_up()
    message = str(info.value)
    assert "generator.model" in message and "hf download no-such-org/no-such-model" in message
    assert "HF_HUB_OFFLINE" in message


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def hf_rag(tiny_model_dir: Path, tiny_adapter_dir: Path, minilm):  # type: ignore[no-untyped-def]
    from rag.pipeline import RAG
    from rag.retrieval import Retriever
    from tests.helpers import CATALOG, ArraySnapshot, StaticLive

    config = hf_config(tiny_model_dir, tiny_adapter_dir, max_new_tokens=48)
    retriever = Retriever(
        config, StaticLive(ArraySnapshot(CATALOG, minilm.embed([r.title for r in CATALOG]))), minilm
    )
    generator = HFGenerator(config)
    script = scripted(generator, ANSWER)
    yield RAG(config, retriever, generator)
    script.handle.remove()


def test_rag_answer_with_hf_backend_is_grounded_and_cites(hf_rag) -> None:  # type: ignore[no-untyped-def]
    answer = hf_rag.answer("who wrote City of Djinns?")
    assert answer.generator == "hf"
    assert answer.text == ANSWER
    assert answer.sources[0].uid == "B001"
    assert answer.grounded  # the scripted sentence is in source [1]


def test_rag_answer_streams_with_hf_backend(hf_rag) -> None:  # type: ignore[no-untyped-def]
    stream = hf_rag.answer("who wrote City of Djinns?", stream=True)
    pieces = list(stream)
    assert len(pieces) >= 2 and "".join(pieces).strip() == ANSWER
    assert stream.answer is not None and stream.answer.text == ANSWER and stream.answer.grounded


def test_chat_repl_streams_hf_answers(hf_rag) -> None:  # type: ignore[no-untyped-def]
    from rag.chat import run_repl

    lines = iter(["who wrote City of Djinns?", "/quit"])
    out = io.StringIO()
    status = run_repl(hf_rag.config, input_fn=lambda prompt: next(lines), output=out, rag=hf_rag)
    text = out.getvalue()
    assert status == 0
    assert "(hf answers)" in text
    assert f"bot> {ANSWER}" in text
    assert AFTER_STOP.strip() not in text
    assert "City of Djinns" in text  # the sources block


def test_unsloth_backend_refuses_cpu_machines_clearly(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(GeneratorError, match="needs an NVIDIA GPU"):
        make_generator(hf_config(tiny_model_dir, backend="unsloth"))


def test_adapter_tokenizer_is_preferred(tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, tiny_adapter_dir))
    assert generator._tokenizer_source() == str(tiny_adapter_dir)
    bare = tmp_path / "adapter"
    shutil.copytree(
        tiny_adapter_dir,
        bare,
        ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "chat_template*"),
    )
    assert HFGenerator(hf_config(tiny_model_dir, bare))._tokenizer_source() == str(tiny_model_dir)


# --------------------------------------------------------------------------- batching, precision


def _varied_requests() -> list[GenerationRequest]:
    from rag.types import CatalogRow

    rows = [
        CatalogRow(uid=f"U{i}", title=f"Product number {i}", content="word " * (5 + 9 * i)) for i in range(4)
    ]
    questions = [
        "who wrote it?",
        "what is Product number 2 about, in a few words please?",
        "price?",
        "tell me everything about the third product in the catalog",
        "when?",
    ]
    return [request_for(q, [Hit(row=rows[j % 4], score=0.9)] * (1 + j % 3)) for j, q in enumerate(questions)]


def test_batched_generation_gives_the_texts_of_one_at_a_time(tiny_model_dir: Path) -> None:
    """Left padding, length sorting and chunking must not change a greedy answer."""
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=10, no_repeat_ngram_size=3))
    requests = _varied_requests()
    requests[1].max_new_tokens = 4  # its own sampling group
    generator.warm_up()
    lengths = {len(generator._prompt_ids(r)) for r in requests}
    assert len(lengths) >= 4  # the batch really pads
    alone = [(generator.generate(r), r.new_tokens, r.finish_reason) for r in _varied_requests_like(requests)]
    batched = generator.generate_batch(requests, batch_size=3)
    assert batched == [text for text, _, _ in alone]
    assert [(r.new_tokens, r.finish_reason) for r in requests] == [(n, f) for _, n, f in alone]
    assert requests[1].new_tokens <= 4


def test_batched_generation_with_the_end_boost(tiny_model_dir: Path) -> None:
    """The end-token boost as a logits processor (batched, left-padded) and in the token loop (one at
    a time) counts the same answer tokens, so the texts and stops agree."""
    generator = HFGenerator(
        hf_config(tiny_model_dir, max_new_tokens=40, end_boost_after=4, end_boost_rate=1.6)
    )
    requests = _varied_requests()
    alone = [(generator.generate(r), r.new_tokens, r.finish_reason) for r in _varied_requests_like(requests)]
    assert generator.generate_batch(requests, batch_size=3) == [text for text, _, _ in alone]
    assert [(r.new_tokens, r.finish_reason) for r in requests] == [(n, f) for _, n, f in alone]


def test_end_boost_ends_answers_at_the_end_token(tiny_model_dir: Path) -> None:
    """A random-init model rarely picks the end token and mostly runs to max_new_tokens; with the boost
    past 5 tokens every answer stops at the end token, no later than without it."""
    plain = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=60))
    boosted = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=60, end_boost_after=5, end_boost_rate=1.6))
    plain_requests = _varied_requests()
    plain.generate_batch(plain_requests)
    ran_out = [i for i, r in enumerate(plain_requests) if r.finish_reason == "length"]
    assert len(ran_out) >= 3
    for i, request in enumerate(_varied_requests()):
        boosted.generate(request)
        assert request.finish_reason == "stop"
        assert request.new_tokens is not None and request.new_tokens <= (plain_requests[i].new_tokens or 0)
        if i in ran_out:  # the boost, not the model, ended it: after the threshold, before the limit
            assert 5 < request.new_tokens < 60


def test_end_boost_math_and_bans() -> None:
    import torch

    from rag.generators.common import Sampling, boost_end

    sampling = Sampling(8, 0.0, 1.0, 1.0, end_boost_after=2, end_boost_rate=1.5)
    stops = torch.tensor([1])
    scores = torch.tensor([[3.0, -2.0, 0.5]])
    assert torch.equal(boost_end(scores.clone(), stops, 2, sampling), scores)  # not past the threshold
    boosted = boost_end(scores.clone(), stops, 4, sampling)  # 2 past: |-2| * (1.5**2 - 1) = 2.5
    assert boosted[0, 1].item() == pytest.approx(0.5) and torch.equal(boosted[0, [0, 2]], scores[0, [0, 2]])
    banned = torch.tensor([[3.0, -torch.inf, 0.5]])
    assert boost_end(banned.clone(), stops, 50, sampling)[0, 1].item() == -torch.inf  # a ban stays
    huge = boost_end(torch.tensor([[3.0, 0.0, 0.5]]), stops, 10**6, sampling)
    assert torch.isfinite(huge).all()  # no 0 * inf


def _varied_requests_like(requests: list[GenerationRequest]) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            question=r.question, hits=r.hits, messages=r.messages, max_new_tokens=r.max_new_tokens
        )
        for r in requests
    ]


def test_batch_size_one_and_a_single_request(tiny_model_dir: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=6, batch_size=1))
    requests = _varied_requests()[:2]
    assert generator.generate_batch(requests) == [
        generator.generate(r) for r in _varied_requests_like(requests)
    ]
    assert generator.generate_batch([]) == []


def test_int8_weights_on_cpu_generate_and_are_quantised(tiny_model_dir: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=8, dtype="int8"))
    generator.warm_up()
    import torch

    kinds = {type(m) for m in generator.model.modules()}
    assert torch.ao.nn.quantized.dynamic.Linear in kinds and torch.nn.Linear not in kinds
    text = generator.generate(request_for())
    assert isinstance(text, str) and 0 < generator.last_stats["new_tokens"] <= 8


def test_int8_on_cuda_is_refused_with_the_option_named(tiny_model_dir: Path) -> None:
    generator = HFGenerator(hf_config(tiny_model_dir, dtype="int8"))
    generator.device = "cuda"
    with pytest.raises(GeneratorError, match="generator.dtype: int8"):
        generator._torch_dtype()


def test_unmerged_adapter_gives_the_merged_logits(tiny_model_dir: Path, tiny_adapter_dir: Path) -> None:
    import torch

    merged = HFGenerator(hf_config(tiny_model_dir, tiny_adapter_dir))
    separate = HFGenerator(hf_config(tiny_model_dir, tiny_adapter_dir, merge_adapter=False))
    merged.warm_up()
    separate.warm_up()
    assert not any("lora" in name for name, _ in merged.model.named_modules())
    assert any("lora" in name for name, _ in separate.model.named_modules())
    inputs = merged._encode(request_for())
    with torch.no_grad():
        a, b = (g.model(**inputs).logits[0, -1] for g in (merged, separate))
    assert torch.allclose(a, b, atol=1e-4)


def test_compile_is_cuda_only_and_cpu_text_is_unchanged(tiny_model_dir: Path) -> None:
    plain = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=8))
    compiled = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=8, compile=True))
    assert compiled.generate(request_for()) == plain.generate(request_for())
    assert not compiled._compiled()
    assert compiled._generation_config(resolve_sampling(compiled.config.generator)).disable_compile


@pytest.mark.parametrize("capacity", [1, 7, 400])
def test_reserved_cache_gives_the_logits_of_the_dynamic_cache(tiny_model_dir: Path, capacity: int) -> None:
    """The streaming loop's cache writes in place and grows past its reservation: same logits."""
    import torch
    from transformers import DynamicCache

    from rag.generators.static_decode import reserved_cache

    generator = HFGenerator(hf_config(tiny_model_dir))
    generator.warm_up()
    model = generator.model
    ids = torch.tensor([generator._prompt_ids(request_for())])
    caches = [DynamicCache(config=model.config), reserved_cache(model.config, capacity)]
    with torch.inference_mode():
        logits = [model(input_ids=ids, past_key_values=c, use_cache=True).logits[:, -1] for c in caches]
        for step in range(12):
            assert torch.allclose(logits[0], logits[1], atol=1e-5), step
            token = torch.argmax(logits[0], dim=-1, keepdim=True)
            logits = [model(input_ids=token, past_key_values=c, use_cache=True).logits[:, -1] for c in caches]
    assert caches[1].get_seq_length() == ids.shape[1] + 12


def _pull_into(box: list[Any], stream: Iterator[str]) -> None:
    box.append(next(stream, None))


@pytest.mark.parametrize("path", ["eager", "static"])
def test_stream_pieces_can_be_pulled_from_different_threads(
    tiny_model_dir: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rag serve` pulls a stream's pieces in whichever worker thread is free; inference mode is per
    thread, so a loop that held it across its yields failed on the second thread ("Inplace update to
    inference tensor outside InferenceMode")."""
    generator = HFGenerator(hf_config(tiny_model_dir, max_new_tokens=12))
    if path == "static":
        _static_path(generator, monkeypatch)
    expected = reference_generate(HFGenerator(hf_config(tiny_model_dir, max_new_tokens=12)), request_for())
    for _ in range(2):  # the second request reuses the static cache, reset in another thread
        stream = generator.stream(request_for())
        pieces: list[str] = []
        while True:
            box: list[Any] = []
            worker = threading.Thread(target=_pull_into, args=(box, stream))
            worker.start()
            worker.join()
            if box[0] is None:
                break
            pieces.append(box[0])
        assert "".join(pieces).strip() == expected


def test_the_server_loads_the_llm_before_it_says_ready(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api.app._load warms the generator up, so the first question does not pay the model load."""
    from api import app as api_app
    from rag.pipeline import RAG

    generator = HFGenerator(hf_config(tiny_model_dir))
    monkeypatch.setattr(
        RAG, "from_config", classmethod(lambda cls, config: RAG(config, _NoRetriever(), generator))
    )
    state = api_app.ApiState(hf_config(tiny_model_dir), None)
    api_app._load(state)
    assert state.load_error is None and state.rag is not None
    assert generator.model is not None


class _NoRetriever:
    snapshot = None

    def search(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []
