"""The CUDA path of fine-tuning: unsloth 4-bit QLoRA on a tiny random-init model (device machine only).

    python -m pytest tests/test_finetune_gpu.py -m gpu -q          # on a CUDA machine with unsloth

Skipped automatically without CUDA (tests/conftest.py). Set FINETUNE_GPU_ARTIFACTS=DIR to keep the
run's adapter and base model (the device run copies them back so the CPU path can load them:
tests/test_finetune_train.py::test_cpu_loads_gpu_adapter).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


def test_unsloth_qlora_trains_and_saves_adapter(tmp_path: Path) -> None:
    pytest.importorskip("unsloth")
    from finetune.train import train
    from rag.config import load_config

    run = tmp_path / "run"
    config = load_config(
        "configs/tiny-cpu.yaml",
        [
            f"finetune.output_dir={run}",
            "finetune.backend=unsloth",
            "finetune.load_in_4bit=true",
            "finetune.tiny.hidden_size=256",
            "finetune.tiny.heads=4",
            "finetune.tiny.layers=2",
            "finetune.synthetic_rows=200",
            "finetune.examples.sample_size=48",
            "finetune.training.max_steps=8",
            "finetune.training.gradient_checkpointing=unsloth",
            "finetune.training.save_steps=4",
            "finetune.training.optim=adamw_8bit",
            "finetune.training.logging_steps=1",
            "finetune.examples.retriever=lexical",  # the GPU path is under test here, not the index
        ],
    )
    summary = train(config, progress=False)
    assert summary["backend"] == "unsloth"
    assert summary["steps"] == 8
    adapter = run / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == config.finetune.lora.r
    records = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 4 and all(loss == loss for loss in losses)  # logged and not NaN
    assert (run / "loss.png").is_file()
    keep = os.environ.get("FINETUNE_GPU_ARTIFACTS")
    if keep:
        dest = Path(keep)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("adapter", "base-model"):
            shutil.copytree(run / name, dest / name, dirs_exist_ok=True)
        for name in ("run.json", "train_log.jsonl", "data_stats.json", "examples.train.jsonl"):
            shutil.copy2(run / name, dest / name)
