"""Export a fine-tuning run: LoRA merged into 16-bit weights, or GGUF for llama.cpp / Ollama.

    rag finetune export --run runs/tiny-cpu --merged            # -> runs/tiny-cpu/merged (safetensors)
    rag finetune export --run runs/llama3 --gguf q4_k_m         # CUDA + unsloth + llama.cpp

Merging needs the base model in 16 bit: a run trained on a pre-quantised hub checkpoint
(`unsloth/...-bnb-4bit`) must be given its 16-bit original with `--base`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

from finetune.train import FinetuneError, _missing_model, _offline, cuda_available, unsloth_available

log = logging.getLogger(__name__)


def _adapter_dir(run: Path) -> Path:
    adapter = run / "adapter" if (run / "adapter").is_dir() else run
    if not (adapter / "adapter_config.json").is_file():
        raise FinetuneError(
            f"--run {run}: no adapter/adapter_config.json there; point it at a run directory "
            "that `rag finetune` wrote"
        )
    return adapter


def base_model_of(adapter: Path) -> str:
    data = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = data.get("base_model_name_or_path")
    if not base:
        raise FinetuneError(f"{adapter}/adapter_config.json names no base model; pass --base")
    return str(base)


def export_merged(
    run: str | Path, out: str | Path | None = None, *, base: str | None = None, dtype: str = "bfloat16"
) -> Path:
    """Load base (16 bit) + adapter, merge the LoRA weights in, save safetensors + tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Path(run)
    adapter = _adapter_dir(run)
    base = base or base_model_of(adapter)
    if "bnb-4bit" in base or "4bit" in base.lower():
        raise FinetuneError(
            f"the base model {base!r} is 4-bit quantised; merge into its 16-bit original with "
            "--base (e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0 or a local copy of it)"
        )
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, local_files_only=_offline())
    except (OSError, ValueError) as exc:
        raise _missing_model(base, exc) from exc
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    embeddings = cast("torch.nn.Embedding", model.get_input_embeddings())  # typed as a plain nn.Module
    if len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    target = Path(out) if out else run / "merged"
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def export_gguf(
    run: str | Path, out: str | Path | None = None, *, quantization: str = "q4_k_m", base: str | None = None
) -> Path:
    """GGUF through unsloth's save_pretrained_gguf (it drives llama.cpp's converter)."""
    if not cuda_available() or not unsloth_available():
        raise FinetuneError(
            "--gguf needs unsloth on a CUDA machine (pip install '.[gpu]'). Elsewhere: export --merged, then run "
            "llama.cpp's converter on it: python llama.cpp/convert_hf_to_gguf.py RUN/merged --outtype q8_0 "
            "(and llama-quantize for q4_k_m)"
        )
    from unsloth import FastLanguageModel

    run = Path(run)
    adapter = _adapter_dir(run)
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(adapter), load_in_4bit=False)
    target = Path(out) if out else run / "gguf"
    try:
        model.save_pretrained_gguf(str(target), tokenizer, quantization_method=quantization)
    except Exception as exc:  # unsloth raises plain RuntimeErrors when llama.cpp cannot be built or found
        raise FinetuneError(
            f"GGUF export failed ({exc}); unsloth needs llama.cpp (it clones and builds it on "
            "first use, which needs network and a compiler)"
        ) from exc
    return target


def describe(path: Path) -> dict[str, Any]:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {
        "path": str(path),
        "files": [p.name for p in files],
        "bytes": sum(p.stat().st_size for p in files),
    }
