"""`rag finetune` subcommands.

rag finetune --config configs/tiny-cpu.yaml [--resume]          # train (same as `rag finetune train`)
rag finetune data --config configs/tiny-cpu.yaml [--out FILE]    # write the examples JSONL only
rag finetune export --run runs/tiny-cpu --merged [--base MODEL]  # 16-bit merged safetensors
rag finetune export --run runs/llama3 --gguf q4_k_m               # GGUF (CUDA + unsloth)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rag.cli_common import UsageError, config_from_args


def _cmd_train(args: argparse.Namespace) -> int:
    from finetune.train import FinetuneError, is_main_process, train

    config = config_from_args(args)
    try:
        summary = train(config, resume=args.resume, progress=not args.quiet)
    except FinetuneError as exc:
        raise UsageError(str(exc)) from None
    if not is_main_process():  # under torchrun / accelerate launch, rank 0 alone reports
        return 0
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "backend",
                    "world_size",
                    "steps",
                    "train_seconds",
                    "final_loss",
                    "eval_loss",
                    "adapter",
                    "loss_plot",
                )
            },
            indent=2,
        )
    )
    print(f'serve it: rag ask "..." --set generator.backend=hf --set generator.adapter={summary["adapter"]}')
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from finetune.train import FinetuneError, answer_token_counter, prepare_data

    config = config_from_args(args)
    run_dir = Path(config.finetune.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        examples, stats, _ = prepare_data(
            config, run_dir, count_tokens=answer_token_counter(config, run_dir, required=False)
        )
    except FinetuneError as exc:
        raise UsageError(str(exc)) from None
    from finetune.data import write_examples

    out = write_examples(examples, args.out or run_dir / "examples.jsonl")
    (out.parent / "data_stats.json").write_text(
        json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(
        f"wrote {len(examples)} examples to {out} "
        f"(train {stats['split_examples'].get('train', 0)}, validation {stats['split_examples'].get('validation', 0)})"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from finetune.export import describe, export_gguf, export_merged
    from finetune.train import FinetuneError

    if not args.merged and not args.gguf:
        raise UsageError("rag finetune export: choose --merged and/or --gguf QUANT")
    try:
        if args.merged:
            path = export_merged(args.run, args.out, base=args.base, dtype=args.dtype)
            print(json.dumps(describe(path), indent=2))
        if args.gguf:
            path = export_gguf(args.run, args.out, quantization=args.gguf, base=args.base)
            print(json.dumps(describe(path), indent=2))
    except FinetuneError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_train)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "finetune",
        parents=[common],
        help="LoRA/QLoRA fine-tuning: train (default), data, export",
        description="Fine-tune a chat model on catalog question/answer examples (docs/finetune.md).",
    )
    _train_options(parser)  # `rag finetune` alone trains, with the options of `rag finetune train`
    actions = parser.add_subparsers(dest="finetune_action", metavar="ACTION")
    _train_options(
        actions.add_parser("train", parents=[common], help="train an adapter (the default action)")
    )

    p = actions.add_parser(
        "data", parents=[common], help="write the training examples (JSONL) for inspection"
    )
    p.add_argument("--out", help="output file (default: <finetune.output_dir>/examples.jsonl)")
    p.set_defaults(func=_cmd_data)

    p = actions.add_parser(
        "export", parents=[common], help="merge the adapter into 16-bit weights, or write GGUF"
    )
    p.add_argument("--run", required=True, help="run directory (finetune.output_dir of the training run)")
    p.add_argument("--merged", action="store_true", help="write 16-bit merged safetensors to RUN/merged")
    p.add_argument(
        "--gguf", metavar="QUANT", help="write GGUF with this llama.cpp quantisation (e.g. q4_k_m, q8_0)"
    )
    p.add_argument("--base", help="base model to merge into (default: the adapter's base_model_name_or_path)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--out", help="output directory")
    p.set_defaults(func=_cmd_export)
