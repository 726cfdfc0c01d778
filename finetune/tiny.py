"""Tiny random-init Llama models and tokenizers, for tests, the CPU recipe and GPU benchmarks.

    python -m finetune.tiny runs/tiny-model          # writes a ~0.2 MB model + tokenizer

`create_tiny_model` trains a small byte-level BPE tokenizer on catalog-like text, gives it the
special tokens a chat model needs (`<s>`, `</s>` as EOS and end of turn, a distinct `<pad>`, the
turn markers `<|system|>`, `<|user|>`, `<|assistant|>`) and a Jinja chat template in the style of
TinyLlama/Zephyr chat, then saves a random-init `LlamaForCausalLM` (safetensors) next to it. It is
deterministic for a given seed and takes well under a second, so test suites build it in a session
fixture instead of downloading weights.

`shape_config(name)` / `create_model_of_shape(name)` give random-init models with the layer shapes
of real checkpoints (Llama-3-8B, Mistral-7B, TinyLlama-1.1B) for throughput and memory benchmarks
on a GPU machine that cannot download weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaConfig, PreTrainedModel

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
TURN_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *TURN_TOKENS]  # ids 0..6 in this order

# A TinyLlama/Zephyr-style template: every turn is "<|role|>\n{content}</s>\n"; the model's answer
# ends with </s>, which is both end-of-turn and EOS, so generation stops there. Written here, not
# copied from a hub tokenizer.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + eos_token }}"
    "{% endgeneration %}{% else %}"
    "{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Real checkpoint shapes (from their published config.json files) for benchmarks.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
    },
    "mistral-7b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32768,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5,
    },
    "tinyllama-1.1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "intermediate_size": 5632,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
    },
}

_FALLBACK_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "and",
    "to",
    "in",
    "for",
    "with",
    "on",
    "by",
    "from",
    "book",
    "novel",
    "guide",
    "story",
    "history",
    "life",
    "world",
    "new",
    "edition",
    "paperback",
    "hardcover",
    "volume",
    "series",
    "collection",
    "author",
    "illustrated",
    "children",
    "cooking",
    "travel",
    "science",
    "music",
    "film",
    "love",
    "war",
    "family",
    "mystery",
    "poems",
    "art",
    "design",
    "garden",
    "health",
    "home",
    "kitchen",
    "toy",
    "game",
    "set",
    "who",
    "wrote",
    "what",
    "is",
    "about",
    "describe",
    "it",
    "this",
    "product",
    "for",
    "readers",
    "kids",
    "adults",
    "made",
    "written",
    "do",
    "que",
    "se",
    "trata",
    "o",
    "livro",
    "quem",
    "escreveu",
    "sobre",
    "para",
    "é",
    "uma",
    "um",
    "de",
    "da",
    "do",
    "em",
    "com",
    "sources",
    "question",
    "answer",
    "cite",
    "numbered",
    "catalog",
    "description",
    "no",
    "the",
    "sources",
    "do",
    "not",
    "describe",
]


def _default_texts(rows: int = 400, seed: int = 0) -> Iterator[str]:
    """Catalog-like text: the synthetic catalog when present, else sentences from a word list."""
    from rag.config import PromptConfig

    yield PromptConfig().system
    yield "Sources:\n[1] Title\n(no description in the catalog)\n\nQuestion: What is it about?"
    try:
        from rag import synthetic  # written by another part of the project; optional here

        records = synthetic.generate_records(rows, seed=seed)
        for record in records:
            data = record if isinstance(record, dict) else getattr(record, "to_dict", dict)()
            yield str(data.get("title", ""))
            yield str(data.get("content", ""))
        return
    except (ImportError, AttributeError, TypeError):
        pass
    import random

    rng = random.Random(seed)
    for _ in range(rows):
        yield " ".join(rng.choice(_FALLBACK_WORDS) for _ in range(rng.randint(5, 25))).capitalize() + "."


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 1024) -> Any:
    """A byte-level BPE tokenizer (any text round-trips) with the chat special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    min_vocab = len(byte_level.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {min_vocab}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(TURN_TOKENS),
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def create_tiny_model(
    output_dir: str | os.PathLike[str],
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.02,
) -> Path:
    """Write a random-init LlamaForCausalLM (safetensors) + its tokenizer into `output_dir`.

    Deterministic for a given `seed` and `texts`. Returns the directory, loadable with
    `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if hidden_size % heads:
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of heads={heads}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(
        texts if texts is not None else _default_texts(seed=seed), vocab_size, max_position_embeddings
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD)}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        dtype="float32",
    )
    # fork_rng: seeding must not change the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "tiny_model.json").write_text(
        json.dumps(
            {
                "created_by": "finetune.tiny.create_tiny_model",
                "seed": seed,
                "vocab_size": len(tokenizer),
                "hidden_size": hidden_size,
                "layers": layers,
                "heads": heads,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return out


def shape_config(name: str, **overrides: Any) -> LlamaConfig:
    """A LlamaConfig with the shapes of a real checkpoint (`MODEL_SHAPES` keys); overrides win."""
    from transformers import LlamaConfig

    key = name.lower()
    if key not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {name!r}; known shapes: {', '.join(sorted(MODEL_SHAPES))}")
    values = {
        **MODEL_SHAPES[key],
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        **overrides,
    }
    return LlamaConfig(**values)


def create_model_of_shape(
    name: str, *, dtype: Any = None, device: str | None = None, seed: int = 0, **overrides: Any
) -> PreTrainedModel:
    """A random-init LlamaForCausalLM with a real checkpoint's shapes, built directly on `device`."""
    import torch
    from transformers import LlamaForCausalLM

    config = shape_config(name, **overrides)
    dtype = dtype or torch.bfloat16
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)  # build in bf16: an 8B model in fp32 would need 32 GB first
        try:
            with torch.device(device or "cpu"):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    return model.to(dtype)


def save_model_of_shape(
    name: str,
    output_dir: str | os.PathLike[str],
    *,
    tokenizer_from: str | os.PathLike[str] | None = None,
    device: str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Save a random-init model of a real shape (bf16 safetensors) with a tokenizer trained to its vocab.

    Lets the unsloth/QLoRA path load a checkpoint from a local directory exactly as it would load
    real weights, without any download.
    """
    import torch

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = int(overrides.get("vocab_size", MODEL_SHAPES[name.lower()]["vocab_size"]))
    if tokenizer_from is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    else:
        # BPE training stops early when the text runs out of merges; the model's embedding matrix
        # keeps the real vocabulary size either way (ids beyond the tokenizer are simply unused).
        tokenizer = train_tokenizer(_default_texts(), vocab_size=min(vocab, 4096))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD)}
    model = create_model_of_shape(
        name,
        dtype=torch.bfloat16,
        device=device,
        seed=seed,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        **overrides,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="write a tiny random-init Llama + tokenizer")
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    path = create_tiny_model(
        args.output_dir, seed=args.seed, hidden_size=args.hidden_size, layers=args.layers
    )
    print(f"wrote a tiny model to {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
