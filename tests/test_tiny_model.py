"""Tests of the tiny random-init model builder (finetune/tiny.py).

.venv/bin/python -m pytest tests/test_tiny_model.py -q
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from finetune.tiny import CHAT_TEMPLATE, MODEL_SHAPES, create_tiny_model, shape_config


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.suffix in (".safetensors", ".json") and p.name != "tiny_model.json"
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_files_are_safetensors_and_tokenizer(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert "model.safetensors" in names
    assert "tokenizer.json" in names and "config.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)


def test_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    again = create_tiny_model(tmp_path / "again")
    assert _digest(again) == _digest(tiny_dir)
    other = create_tiny_model(tmp_path / "other", seed=1)
    assert _digest(other)["model.safetensors"] != _digest(tiny_dir)["model.safetensors"]


def test_special_tokens_and_template(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert tok.eos_token == "</s>" and tok.bos_token == "<s>"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>\nS</s>\n<|user|>\nQ?</s>\n<|assistant|>\n"
    # byte-level: any text (accents, emoji) round-trips
    sample = "Do que se trata o livro «Coração»? 📚"
    assert tok.decode(tok(sample, add_special_tokens=False).input_ids) == sample


def test_model_generates_with_eos_config(tiny_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    ids = tok("hello", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 5


def test_real_shapes() -> None:
    cfg = shape_config("llama3-8b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.vocab_size) == (
        4096,
        32,
        8,
        128256,
    )
    cfg = shape_config("tinyllama-1.1b", num_hidden_layers=1)
    assert cfg.num_hidden_layers == 1 and cfg.intermediate_size == 5632
    assert set(MODEL_SHAPES) >= {"llama3-8b", "tinyllama-1.1b", "mistral-7b"}
    with pytest.raises(ValueError, match="known shapes"):
        shape_config("gpt-5")
