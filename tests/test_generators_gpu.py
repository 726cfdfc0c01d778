"""GPU checks of the `unsloth` and `hf` (4-bit) backends on a random-init TinyLlama-1.1B-shaped model.

    # on a CUDA machine with `pip install .[gpu]` (skipped elsewhere):
    RAG_GPU_STATS=gpu_stats.json python -m pytest tests/test_generators_gpu.py -m gpu -q -s

The model has TinyLlama-1.1B's shapes (hidden 2048, 22 layers, 32 heads, 4 kv heads, intermediate
5632, vocab 32000) with random bf16 weights, saved locally and loaded back by the backend exactly as
real weights would be. Throughput (new tokens / second of a greedy generation, batch 1) is printed
and, when RAG_GPU_STATS names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rag.config import Config, GeneratorConfig
from rag.generators import make_generator
from rag.prompt import build_messages
from rag.types import CatalogRow, GenerationRequest, Hit

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

NEW_TOKENS = 128
STATS: dict[str, Any] = {}


def _record(key: str, value: Any) -> None:
    STATS[key] = value
    print(f"[gpu] {key}: {value}")
    target = os.environ.get("RAG_GPU_STATS")
    if target:
        Path(target).write_text(json.dumps(STATS, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tinyllama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune.tiny import save_model_of_shape

    return save_model_of_shape("tinyllama-1.1b", tmp_path_factory.mktemp("tinyllama-shape"), device="cuda")


@pytest.fixture(scope="module")
def tinyllama_adapter(tinyllama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tinyllama-adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tinyllama_dir, dtype=torch.bfloat16)
    lora = LoraConfig(
        r=16,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, lora).save_pretrained(out)
    del model
    return out


def _request() -> GenerationRequest:
    hits = [
        Hit(
            CatalogRow(
                "B001",
                "City of Djinns: A Year in Delhi",
                "A travel memoir by William Dalrymple. The author spends a year in Delhi.",
            ),
            0.9,
        )
    ]
    return GenerationRequest(
        question="who wrote City of Djinns?",
        hits=hits,
        messages=build_messages("who wrote City of Djinns?", hits),
        max_new_tokens=NEW_TOKENS,
    )


def _run(backend: str, model: Path, adapter: Path | None = None) -> dict[str, float]:
    import time

    import torch

    config = Config(
        generator=GeneratorConfig(
            backend=backend,
            model=str(model),  # type: ignore[arg-type]
            adapter=str(adapter) if adapter else None,
            load_in_4bit=True,
            device="cuda",
        )
    )
    generator = make_generator(config)
    started = time.perf_counter()
    generator.warm_up()  # type: ignore[attr-defined]
    load_s = time.perf_counter() - started
    assert generator.quantized  # type: ignore[attr-defined]
    generator.generate(_request())  # warm-up: kernels compile / autotune on the first call
    torch.cuda.synchronize()
    text = generator.generate(_request())
    stats = dict(generator.last_stats)  # type: ignore[attr-defined]
    pieces = list(generator.stream(_request()))
    stream_stats = dict(generator.last_stats)  # type: ignore[attr-defined]
    assert isinstance(text, str)
    assert stats["new_tokens"] >= 1 and stats["new_tokens"] <= NEW_TOKENS
    assert "".join(pieces).strip() == text  # greedy: streaming gives the same text
    result = {
        "load_s": round(load_s, 2),
        "new_tokens": stats["new_tokens"],
        "tokens_per_s": round(stats["tokens_per_s"], 1),
        "stream_tokens_per_s": round(stream_stats["tokens_per_s"], 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "text_head": text[:60],
    }
    del generator
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def test_environment() -> None:
    import torch
    import transformers

    info = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import unsloth

        info["unsloth"] = unsloth.__version__
    except Exception as exc:  # noqa: BLE001 - reported, the unsloth tests below then fail loudly
        info["unsloth"] = f"import failed: {exc!r}"[:300]
    _record("environment", info)


def test_unsloth_generates_on_a_tinyllama_shaped_model(tinyllama_dir: Path) -> None:
    _record("unsloth_4bit", _run("unsloth", tinyllama_dir))


def test_unsloth_with_lora_adapter(tinyllama_dir: Path, tinyllama_adapter: Path) -> None:
    _record("unsloth_4bit_lora", _run("unsloth", tinyllama_dir, tinyllama_adapter))


def test_hf_4bit_with_lora_adapter(tinyllama_dir: Path, tinyllama_adapter: Path) -> None:
    _record("hf_4bit_lora", _run("hf", tinyllama_dir, tinyllama_adapter))
