"""QLoRA training throughput and peak memory on a CUDA GPU: the project's pipeline vs a plain loop.

    python benchmarks/bench_finetune_gpu.py --shapes llama3-8b tinyllama-1.1b --out bench_out

For each model shape (random-init weights with the layer sizes of the real checkpoint, saved as a
local bf16 checkpoint, since the benchmark machine cannot download weights) two runs, each in its
own process so that memory peaks and unsloth's global patches do not leak between them:

- `pipeline`: what `rag finetune` does on CUDA: unsloth `FastLanguageModel` 4-bit + LoRA r=16 on all
  linear layers, "unsloth" gradient checkpointing, trl SFTTrainer (finetune.train.trainer_class),
  padding-free batches, adamw_8bit;
- `plain`: the common notebook recipe without either: transformers + bitsandbytes 4-bit nf4 +
  peft LoRA (same r and modules), gradient checkpointing, batches padded to the longest example,
  a plain PyTorch loop with bitsandbytes' 8-bit AdamW.

Both train on the same examples: the synthetic catalog through the project's example builder and
prompt builder (question + 4 retrieved sources + gold description, a few hundred tokens each).
Reported: non-padding tokens per second over the timed steps (after warm-up), peak GPU memory
(torch.cuda.max_memory_allocated and max_memory_reserved), and pipeline/plain ratios. Results go
to OUT/bench_finetune_gpu.json; a table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_examples(tokenizer: Any, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Tokenised examples from the synthetic catalog, built as `rag finetune` builds them."""
    from finetune.data import LexicalRetriever, build_examples
    from finetune.formatting import prepare_tokenizer, tokenize_example, turn_format
    from rag.config import load_config
    from rag.synthetic import generate_records
    from rag.types import CatalogRow

    config = load_config(
        None,
        [
            f"finetune.examples.sample_size={n}",
            "finetune.examples.context_k=4",
            "finetune.examples.validation_fraction=0",
            "finetune.examples.answer_max_tokens=160",
        ],
    )
    rows = [
        CatalogRow(str(r["uid"]), str(r["title"]), str(r.get("content", "")))
        for r in generate_records(4 * n, seed=seed)
    ]
    examples, _ = build_examples(rows, config, LexicalRetriever(rows))
    prepare_tokenizer(tokenizer)
    fmt = turn_format(tokenizer)
    out = []
    for e in examples:
        t = tokenize_example(tokenizer, e.messages, e.answer, fmt)
        if len(t) <= 2048:
            out.append({"input_ids": t.input_ids, "labels": t.labels})
    return out


def build_model(shape: str, directory: Path) -> Path:
    from finetune.tiny import save_model_of_shape

    if not (directory / "config.json").exists():
        t = time.time()
        save_model_of_shape(shape, directory, device="cuda")
        print(f"[{shape}] random-init checkpoint written in {time.time() - t:.0f}s", flush=True)
    return directory


# MODE:BATCH:GC - "unsloth": unsloth's checkpointing that offloads each layer's input to host memory;
# "true": plain recompute with the layer inputs kept on the GPU (no host copies); "false": no recompute
# (a third fewer FLOPs, activations of every layer kept: memory grows with the micro-batch's tokens)
GC_CHOICES: dict[str, Any] = {"unsloth": "unsloth", "true": True, "false": False}


def run_pipeline(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import unsloth  # noqa: F401  - before transformers/trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig
    from unsloth import FastLanguageModel

    from finetune.formatting import prepare_tokenizer
    from finetune.train import trainer_class

    torch.cuda.reset_peak_memory_stats()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(model_dir),
        max_seq_length=2048,
        dtype=None,
        load_in_4bit=True,
        use_gradient_checkpointing=GC_CHOICES[args.gc],
    )
    prepare_tokenizer(tokenizer)
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing=GC_CHOICES[args.gc],
        random_state=0,
        max_seq_length=2048,
    )
    examples = make_examples(tokenizer, args.examples)
    ds = Dataset.from_dict(
        {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}
    )

    marks: dict[str, Any] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step == args.warmup:
                torch.cuda.synchronize()
                marks["t0"], marks["tok0"] = time.perf_counter(), int(state.num_input_tokens_seen)
            if state.global_step == args.warmup + args.steps:
                torch.cuda.synchronize()
                marks["t1"], marks["tok1"] = time.perf_counter(), int(state.num_input_tokens_seen)

    cfg = SFTConfig(
        output_dir="/tmp/bench-pipeline",
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=2e-4,
        warmup_steps=0.03,
        max_grad_norm=0.3,
        optim="adamw_8bit",
        bf16=True,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        # "packed": best-fit-decreasing packing into fixed 8192-token rows (fixed shapes for the compiled
        # blocks); "pipeline": padding-free micro-batches of whole examples (what rag finetune uses)
        # "grouped": padded micro-batches of similar lengths (LengthGroupedSampler): right padding lets unsloth
        # drop the mask and run one causal SDPA (flash) call per layer instead of one per packed example
        max_length=8192 if args.mode == "packed" else (2048 if args.mode == "grouped" else None),
        packing=args.mode == "packed",
        padding_free=args.mode != "grouped",
        train_sampling_strategy="group_by_length" if args.mode == "grouped" else "random",
        completion_only_loss=False,
        include_num_input_tokens_seen="non_padding",
        seed=0,
        gradient_checkpointing=False,  # unsloth's own checkpointing is on
    )
    trainer = trainer_class()(
        model=model, args=cfg, train_dataset=ds, processing_class=tokenizer, callbacks=[Timer()]
    )
    trainer.train()
    tokens = marks["tok1"] - marks["tok0"]
    seconds = marks["t1"] - marks["t0"]
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "final_loss": next((r["loss"] for r in reversed(trainer.state.log_history) if "loss" in r), None),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


def run_plain(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import random

    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    examples = make_examples(tokenizer, args.examples)
    pad = tokenizer.pad_token_id
    optimizer = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    rng = random.Random(0)
    model.train()
    t0 = tok0 = None
    tokens = 0
    loss_value = None
    for step in range(args.warmup + args.steps):
        batch = rng.sample(examples, args.batch)
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=labels.cuda())
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        if step + 1 == args.warmup:
            torch.cuda.synchronize()
            t0, tok0 = time.perf_counter(), tokens
        loss_value = float(out.loss.detach())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "tokens": tokens - tok0,
        "seconds": seconds,
        "tokens_per_s": (tokens - tok0) / seconds,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "final_loss": loss_value,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


def child(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    result = (run_plain if args.mode == "plain" else run_pipeline)(model_dir, args)
    result.update(
        {
            "shape": args.shape,
            "mode": args.mode,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "gc": args.gc if args.mode != "plain" else "true",
        }
    )
    Path(args.result).write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["llama3-8b", "tinyllama-1.1b"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["pipeline:16", "plain:4", "plain:16"],
        help="MODE:BATCH[:GC] runs; the recipe's effective batch is 16 (4 x 4 accumulation): padding-free "
        "batches make one micro-batch of 16 cheap, padded ones favour 4. GC (pipeline only): "
        "unsloth (default), true or false, see GC_CHOICES",
    )
    parser.add_argument(
        "--child-timeout", type=float, default=600, help="seconds before one run is abandoned"
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    parser.add_argument("--models", default="/tmp/bench-models")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps (unsloth compiles the blocks)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--gc", default="unsloth", choices=sorted(GC_CHOICES), help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1", "PYTHONUNBUFFERED": "1"}
    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for shape in args.shapes:
        model_dir = build_model(shape, Path(args.models) / shape)
        for spec in args.modes:
            mode, _, rest = spec.partition(":")
            batch, _, gc = rest.partition(":")
            batch = batch or str(args.batch)
            gc = gc or "unsloth"
            name = f"{shape}.{mode}-b{batch}" + (f"-gc{gc}" if mode != "plain" else "")
            result_path = out / f"{name}.json"
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--mode",
                mode,
                "--shape",
                shape,
                "--model-dir",
                str(model_dir),
                "--result",
                str(result_path),
                "--examples",
                str(args.examples),
                "--batch",
                batch,
                "--warmup",
                str(args.warmup),
                "--steps",
                str(args.steps),
                "--gc",
                gc,
            ]
            t = time.time()
            try:
                proc = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=args.child_timeout, check=False
                )
            except subprocess.TimeoutExpired as exc:

                def text(b: Any) -> str:
                    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

                proc = subprocess.CompletedProcess(cmd, -9, text(exc.stdout), text(exc.stderr) + "\nTIMEOUT")
            (out / f"{name}.log").write_text(
                proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-40000:]
            )
            if proc.returncode != 0 or not result_path.exists():
                print(f"[{name}] FAILED rc={proc.returncode}:\n{proc.stderr[-3000:]}", flush=True)
                results.append(
                    {"shape": shape, "mode": mode, "batch": batch, "gc": gc, "error": proc.stderr[-1500:]}
                )
                continue
            result = json.loads(result_path.read_text())
            result["name"] = name
            result["wall_s"] = round(time.time() - t, 1)
            results.append(result)
            print(
                f"[{name}] {result['tokens_per_s']:.0f} tok/s, peak {result['peak_allocated_gib']:.2f} GiB "
                f"allocated / {result['peak_reserved_gib']:.2f} reserved ({result['wall_s']}s)",
                flush=True,
            )
    summary = {"info": info, "results": results, "ratios": {}}
    for shape in args.shapes:
        ok = [r for r in results if r["shape"] == shape and "error" not in r]
        pipe = max((r for r in ok if r["mode"] != "plain"), key=lambda r: r["tokens_per_s"], default=None)
        plain = max((r for r in ok if r["mode"] == "plain"), key=lambda r: r["tokens_per_s"], default=None)
        if pipe and plain:  # best against best
            summary["ratios"][shape] = round(pipe["tokens_per_s"] / plain["tokens_per_s"], 2)
    (out / "bench_finetune_gpu.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\n{info['gpu']}, torch {info['torch']}, batch {args.batch}, {args.steps} timed steps after {args.warmup}"
    )
    print(
        f"{'shape':16} {'mode':9} {'batch':>5} {'gc':8} {'tok/s':>8} {'peak alloc GiB':>15} {'peak reserved GiB':>18}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['shape']:16} {r['mode']:9} {r.get('batch', ''):>5} {r.get('gc', ''):8} FAILED")
        else:
            print(
                f"{r['shape']:16} {r['mode']:9} {r['batch']:5} {r['gc']:8} {r['tokens_per_s']:8.0f} "
                f"{r['peak_allocated_gib']:15.2f} {r['peak_reserved_gib']:18.2f}"
            )
    for shape, ratio in summary["ratios"].items():
        print(f"{shape}: best pipeline / best plain = {ratio}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
