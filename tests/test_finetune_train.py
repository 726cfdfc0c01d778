"""CPU training end to end: run directory, resume, overfit with the serving prompt, export, CLI.

    .venv/bin/python -m pytest tests/test_finetune_train.py -q            # fast variants
    .venv/bin/python -m pytest tests/test_finetune_train.py -q -m slow    # the longer overfit

The overfit test is the proof that data, template, masking and EOS fit together: after training a
tiny random-init Llama on a handful of products, greedy decoding from the serving prompt
(`rag.prompt.build_messages` -> chat template with the generation prompt) reproduces a trained
product's answer token for token and stops at the end token before max_new_tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rag.config import load_config

pytestmark = pytest.mark.integration


def _catalog(path: Path, n: int) -> Path:
    from rag.synthetic import generate_records

    records = [r for r in generate_records(8 * n, seed=3) if len(r.get("content", "")) > 150][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _config(run: Path, catalog: Path, *extra: str) -> Any:
    return load_config(
        None,
        [
            f"finetune.output_dir={run}",
            f"finetune.data={catalog}",
            "finetune.tiny_model=true",
            "finetune.tiny.vocab_size=1024",
            "finetune.backend=transformers",
            "finetune.load_in_4bit=false",
            "finetune.max_seq_length=512",
            "finetune.examples.validation_fraction=0",
            "finetune.examples.gold_probability=1.0",
            "finetune.examples.retriever=lexical",
            "finetune.lora.r=32",
            "finetune.lora.alpha=64",
            "finetune.training.learning_rate=0.01",
            "finetune.training.batching=padding_free",
            "finetune.training.gradient_checkpointing=false",
            "finetune.training.gradient_accumulation_steps=1",
            "finetune.training.warmup_ratio=0.0",
            "finetune.training.max_grad_norm=1.0",
            "finetune.training.logging_steps=5",
            "finetune.training.save_steps=1000",
            "finetune.training.num_threads=2",
            *extra,
        ],
    )


def _greedy_matches(run: Path, max_new_tokens: int) -> list[tuple[int, int, bool, int]]:
    """For each trained example: (matching prefix length, answer length, ended with EOS, generated count)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.data import read_examples
    from finetune.formatting import render_prompt, turn_format
    from rag.generators.common import render_prompt as serving_render

    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run / "base-model"), run / "adapter"
    ).eval()
    end_id = tokenizer.convert_tokens_to_ids(turn_format(tokenizer).end_token)
    out = []
    for example in read_examples(run / "examples.train.jsonl"):
        prompt, templated = serving_render(tokenizer, example.messages)  # what the hf backend sends
        assert templated and prompt == render_prompt(tokenizer, example.messages)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            generated = model.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=end_id,
                pad_token_id=tokenizer.pad_token_id,
            )[0, ids.shape[1] :].tolist()
        want = tokenizer(example.answer, add_special_tokens=False).input_ids
        n = 0
        while n < min(len(generated), len(want)) and generated[n] == want[n]:
            n += 1
        out.append((n, len(want), bool(generated) and generated[-1] == end_id, len(generated)))
    return out


def _check_run_dir(run: Path) -> None:
    for name in (
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/tokenizer.json",
        "config.yaml",
        "data_stats.json",
        "train_log.jsonl",
        "loss.png",
        "run.json",
        "examples.train.jsonl",
    ):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pkl"))  # no pickled objects
    # only tensor state (loaded with weights_only=True) may be .pt/.pth, inside checkpoints
    assert all("checkpoints" in p.parts for p in [*run.rglob("*.pt"), *run.rglob("*.pth")])
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["catalog"]["read_summary"]["accepted"] >= stats["rows_selected"]
    assert stats["tokens"]["train_answer_tokens"] > 0
    records = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in r and "learning_rate" in r for r in records)
    load_config(run / "config.yaml")  # the resolved config is itself a valid config


def test_overfit_small_reproduces_answer_and_stops(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = _config(
        run,
        _catalog(tmp_path / "cat.jsonl", 6),
        "finetune.examples.sample_size=2",
        "finetune.examples.context_k=1",
        "finetune.examples.answer_max_tokens=16",
        "prompt.max_chars_per_source=80",
        "finetune.training.batch_size=2",
        "finetune.training.max_steps=40",
    )
    from finetune.train import train

    summary = train(config, progress=False)
    _check_run_dir(run)
    assert summary["final_loss"] < 2.0
    results = _greedy_matches(run, max_new_tokens=40)
    assert len(results) == 2
    for matched, length, stopped, generated in results:
        assert length >= 8
        assert matched == length, results  # the whole answer, token for token
        assert stopped and generated == length + 1 < 40  # then the end token, well before the cap

    # the same adapter served by the hf generator backend (what `rag ask --set generator.adapter=...` runs)
    from finetune.data import read_examples
    from rag.generators.hf import HFGenerator
    from rag.types import GenerationRequest

    serving = load_config(
        None,
        [
            "generator.backend=hf",
            f"generator.model={run / 'base-model'}",
            f"generator.adapter={run / 'adapter'}",
            "generator.repetition_penalty=1.0",
            "generator.max_new_tokens=40",
            "generator.device=cpu",
        ],
    )
    example = next(iter(read_examples(run / "examples.train.jsonl")))
    request = GenerationRequest(question="", hits=[], messages=example.messages)
    generator = HFGenerator(serving)
    assert generator.generate(request).strip() == example.answer.strip()
    assert "".join(generator.stream(request)).strip() == example.answer.strip()


@pytest.mark.slow
def test_overfit_four_products_twenty_tokens(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = _config(
        run,
        _catalog(tmp_path / "cat.jsonl", 12),
        "finetune.examples.sample_size=4",
        "finetune.examples.context_k=2",
        "finetune.examples.answer_max_tokens=40",
        "prompt.max_chars_per_source=200",
        "finetune.training.batch_size=4",
        "finetune.training.max_steps=60",
    )
    from finetune.train import train

    train(config, progress=False)
    results = _greedy_matches(run, max_new_tokens=80)
    for matched, _length, stopped, generated in results:
        assert matched >= 20, results
        assert stopped and generated < 80


def test_resume_continues_from_checkpoint_and_export_merged(tmp_path: Path) -> None:
    from finetune.export import export_merged
    from finetune.train import train

    run = tmp_path / "run"
    catalog = _catalog(tmp_path / "cat.jsonl", 6)
    common = [
        "finetune.examples.sample_size=4",
        "finetune.examples.context_k=1",
        "prompt.max_chars_per_source=60",
        "finetune.examples.answer_max_tokens=12",
        "finetune.training.batch_size=2",
        "finetune.training.save_steps=2",
    ]
    first = train(_config(run, catalog, *common, "finetune.training.max_steps=2"), progress=False)
    assert first["steps"] == 2 and (run / "checkpoints" / "checkpoint-2").is_dir()
    second = train(
        _config(run, catalog, *common, "finetune.training.max_steps=4"), resume=True, progress=False
    )
    assert second["resumed_from"].endswith("checkpoint-2") and second["steps"] == 4
    steps = [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)

    merged = export_merged(run, tmp_path / "merged", dtype="float32")
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        b = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(run / "base-model"), run / "adapter"
        )(ids).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_missing_model_error_says_what_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.train import FinetuneError, load_transformers

    config = load_config(None, ["finetune.base_model=some-org/not-downloaded-model"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinetuneError) as info:
        load_transformers(config, config.finetune.base_model)
    text = str(info.value)
    assert "finetune.base_model" in text and "download" in text and "some-org/not-downloaded-model" in text


def test_unsloth_backend_without_cuda_is_a_clear_error() -> None:
    from finetune.train import FinetuneError, cuda_available, resolve_backend

    if cuda_available():
        pytest.skip("this machine has CUDA")
    config = load_config(None, ["finetune.backend=unsloth"])
    with pytest.raises(FinetuneError, match="CUDA"):
        resolve_backend(config)
    assert resolve_backend(load_config(None, ["finetune.backend=auto"])) == "transformers"


def test_cli_data_writes_examples(tmp_path: Path) -> None:
    from rag.cli import main

    run = tmp_path / "run"
    catalog = _catalog(tmp_path / "cat.jsonl", 10)
    rc = main(
        [
            "finetune",
            "data",
            "--set",
            f"finetune.output_dir={run}",
            "--set",
            f"finetune.data={catalog}",
            "--set",
            "finetune.examples.retriever=lexical",
            "--set",
            "finetune.examples.validation_fraction=0.2",
        ]
    )
    assert rc == 0
    lines = (run / "examples.jsonl").read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["messages"][0]["role"] == "system"
    assert json.loads((run / "data_stats.json").read_text())["split_products"]["validation"] == 2


@pytest.mark.gpu  # needs the artifacts of a GPU run; deselected with the GPU tests
@pytest.mark.skipif(
    not os.environ.get("FINETUNE_GPU_ARTIFACTS"), reason="set FINETUNE_GPU_ARTIFACTS to a GPU run's copy"
)
def test_cpu_loads_gpu_adapter() -> None:
    """The adapter unsloth trained on the GPU (tests/test_finetune_gpu.py) loads and runs on the CPU path."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(os.environ["FINETUNE_GPU_ARTIFACTS"])
    tokenizer = AutoTokenizer.from_pretrained(root / "adapter")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(root / "base-model"), root / "adapter"
    )
    ids = tokenizer("Describe it.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora
