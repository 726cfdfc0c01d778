"""Fine-tuning pipeline: catalog rows -> RAFT-style examples -> LoRA/QLoRA training -> adapter/export.

    rag finetune --config configs/tiny-cpu.yaml

Modules: `data` (examples), `formatting` (chat template, label masking), `train` (unsloth on CUDA,
transformers + peft on CPU), `export` (merged 16-bit, GGUF), `tiny` (tiny random-init models),
`cli` (the `rag finetune` subcommands). Nothing heavy is imported here.
"""
