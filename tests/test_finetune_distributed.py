"""Multi-process fine-tuning: `torchrun --nproc_per_node 2` over gloo on the CPU, and the backend routing.

    .venv/bin/python -m pytest tests/test_finetune_distributed.py -q     # about 30 s on 2 cores

unsloth's open version trains on one GPU, so a job of several processes (WORLD_SIZE > 1) goes to
transformers + peft, whose Trainer runs DDP. The same code path runs on GPUs with NCCL; here two CPU
processes and gloo stand in for them. Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.config import load_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def _catalog(path: Path, n: int) -> Path:
    from rag.synthetic import generate_records

    records = [r for r in generate_records(8 * n, seed=3) if len(r.get("content", "")) > 150][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_torchrun_two_processes_train_one_adapter(tmp_path: Path) -> None:
    run = tmp_path / "run"
    catalog = _catalog(tmp_path / "cat.jsonl", 8)
    overrides = [
        f"finetune.output_dir={run}",
        f"finetune.data={catalog}",
        "finetune.tiny_model=true",
        "finetune.tiny.vocab_size=1024",
        "finetune.backend=auto",  # routed to transformers because WORLD_SIZE=2
        "finetune.load_in_4bit=false",
        "finetune.max_seq_length=512",
        "finetune.examples.validation_fraction=0",
        "finetune.examples.gold_probability=1.0",
        "finetune.examples.retriever=lexical",
        "finetune.examples.sample_size=4",
        "finetune.examples.context_k=1",
        "finetune.examples.answer_max_tokens=16",
        "prompt.max_chars_per_source=80",
        "finetune.lora.r=16",
        "finetune.lora.alpha=32",
        "finetune.training.learning_rate=0.01",
        "finetune.training.batch_size=2",  # per process: 2 processes make a global batch of 4
        "finetune.training.max_steps=12",
        "finetune.training.logging_steps=2",
        "finetune.training.warmup_ratio=0.0",
        "finetune.training.save_steps=6",
        "finetune.training.num_threads=1",  # one thread per process on a 2-core machine
        "finetune.training.gradient_checkpointing=false",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # = the `torchrun` script
        "--standalone",  # one node; the rendezvous store takes a free port of its own
        "--nproc_per_node",
        "2",
        "-m",
        "rag.cli",
        "finetune",
        "--quiet",
    ]
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]

    # the CLI reports once (rank 0), and the routing is said once
    assert done.stdout.count('"backend": "transformers"') == 1, done.stdout
    assert done.stdout.count("serve it:") == 1
    assert done.stderr.count("unsloth's open version is single-GPU") == 1, done.stderr[-4000:]

    summary = json.loads((run / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 12 and summary["backend"] == "transformers"

    # one writer for the log: each step once, in order; the loss went down
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"], r["epoch"]) for r in records if "loss" in r]
    assert [s for s, _, _ in losses] == [2, 4, 6, 8, 10, 12]
    assert losses[-1][1] < 0.6 * losses[0][1], losses
    # 4 examples, 2 per process and step: one step is a whole epoch, so the ranks shared the data
    assert losses[0][2] == pytest.approx(2.0)

    # the examples were written once and whole (not interleaved by two writers)
    lines = (run / "examples.train.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["messages"] for line in lines)

    # the adapter: one complete safetensors file, trained (LoRA B starts at zero)
    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(float(t.abs().sum()) > 0 for t in lora_b)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 16
    # checkpoints come from rank 0 only and carry no pickle
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-6"]
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pkl"))


def test_auto_routes_a_multi_process_job_to_transformers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from finetune import train as T

    monkeypatch.setattr(T, "cuda_available", lambda: True)
    monkeypatch.setattr(T, "unsloth_available", lambda: True)
    auto = load_config(None, ["finetune.backend=auto"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert T.resolve_backend(auto) == "unsloth"  # one GPU, unsloth installed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with caplog.at_level(logging.WARNING, logger="finetune.train"):
        assert T.resolve_backend(auto) == "transformers"
    assert "WORLD_SIZE=4" in caplog.text and "single-GPU" in caplog.text
    monkeypatch.setenv("RANK", "3")  # the other ranks route the same way, silently
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finetune.train"):
        assert T.resolve_backend(auto) == "transformers"
    assert caplog.text == ""
    with pytest.raises(
        T.FinetuneError, match=r"unsloth trains on one GPU.*WORLD_SIZE=4.*backend=transformers"
    ):
        T.resolve_backend(load_config(None, ["finetune.backend=unsloth"]))


def test_rank_and_world_size_from_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.train import is_main_process, world_size

    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world_size() == 1 and is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert world_size() == 2 and not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
