"""LoRA / QLoRA supervised fine-tuning on catalog examples, with trl's SFTTrainer.

    rag finetune --config configs/tiny-cpu.yaml            # CPU, tiny random-init model, ~1 minute
    rag finetune --config configs/llama3-8b-qlora.yaml     # CUDA: unsloth 4-bit QLoRA
    rag finetune --config configs/tiny-cpu.yaml --resume   # continue from the last checkpoint

Two backends behind one trainer:
- `unsloth` (CUDA): `FastLanguageModel` loads the model in 4 bit and adds LoRA with its fused kernels
  and "unsloth" gradient checkpointing;
- `transformers` (CPU, or CUDA without unsloth): plain transformers + peft (bitsandbytes 4-bit on
  CUDA when installed; never on CPU).
Both feed trl's `SFTTrainer` a dataset that is already tokenised by `finetune.formatting` (labels -100
on the prompt), so the loss masking is ours and identical on both paths. Batching is padding-free by
default: trl concatenates the batch and passes position_ids; flash-attention kernels (unsloth) and
transformers' SDPA/eager masks (which build a block-diagonal mask from position_ids) both keep the
examples apart.

The run directory (finetune.output_dir) receives: adapter/ (peft safetensors + tokenizer),
config.yaml (resolved), data_stats.json, examples.train.jsonl / examples.validation.jsonl,
train_log.jsonl, loss.png, run.json, checkpoints/ (for --resume) and, for the default synthetic
data, catalog.jsonl + index/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.config import Config, dump_config

log = logging.getLogger(__name__)


class FinetuneError(RuntimeError):
    """A problem the user can fix (missing model, no GPU for unsloth, ...); printed without traceback."""


# --------------------------------------------------------------------------- environment


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def unsloth_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("unsloth") is not None


def world_size() -> int:
    """Processes in this training job: WORLD_SIZE, set by `torchrun` and `accelerate launch` (1 alone)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` job, or the only process: the one that writes."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def resolve_backend(config: Config) -> str:
    """'unsloth' or 'transformers' for this machine; an explicit choice that cannot run is an error.

    unsloth's open version trains on one GPU: a job of several processes (WORLD_SIZE > 1, from
    `torchrun` or `accelerate launch`) goes to transformers + peft, whose Trainer runs DDP.
    """
    wanted = config.finetune.backend
    processes = world_size()
    if wanted == "unsloth":
        if processes > 1:
            raise FinetuneError(
                f"finetune.backend: unsloth trains on one GPU only (its open version), but WORLD_SIZE="
                f"{processes}; use --set finetune.backend=transformers (or auto) for a multi-GPU run"
            )
        if not cuda_available():
            raise FinetuneError(
                "finetune.backend: unsloth needs a CUDA GPU; use --set finetune.backend=transformers "
                "(or auto) to train on the CPU"
            )
        if not unsloth_available():
            raise FinetuneError("finetune.backend: unsloth is not installed; pip install '.[gpu]'")
        return "unsloth"
    if wanted == "auto" and processes > 1:
        if is_main_process():
            log.warning(
                "finetune.backend auto: WORLD_SIZE=%d processes; unsloth's open version is single-GPU, "
                "so training with transformers + peft (DDP)",
                processes,
            )
        return "transformers"
    if wanted == "auto" and cuda_available() and unsloth_available():
        return "unsloth"
    return "transformers"


def model_source(config: Config, run_dir: Path, texts: Sequence[str] = ()) -> str:
    """The base model's hub id or directory; builds the tiny random-init model when asked to."""
    ft = config.finetune
    if ft.tiny_model:
        from finetune.tiny import create_tiny_model

        target = run_dir / "base-model"
        if not (target / "config.json").exists():
            create_tiny_model(
                target,
                list(texts) or None,
                seed=ft.training.seed,
                vocab_size=ft.tiny.vocab_size,
                hidden_size=ft.tiny.hidden_size,
                layers=ft.tiny.layers,
                heads=ft.tiny.heads,
                initializer_range=ft.tiny.initializer_range,
                max_position_embeddings=max(ft.max_seq_length, 256),
            )
        return str(target)
    from rag.models import ModelPullError, resolve_model

    try:
        return resolve_model(ft.base_model, "finetune.base_model") or ft.base_model
    except ModelPullError as exc:
        raise FinetuneError(str(exc)) from exc


def load_tokenizer(config: Config, source: str) -> Any:
    """The base model's tokenizer alone (cheap: counting answer tokens before the model loads)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            source, trust_remote_code=config.finetune.trust_remote_code, local_files_only=_offline()
        )
    except (OSError, ValueError) as exc:
        raise _missing_model(source, exc) from exc


def _missing_model(model: str, exc: BaseException) -> FinetuneError:
    from rag.generators.common import missing_model_message

    return FinetuneError(missing_model_message(model, key="finetune.base_model", cause=exc))


def _offline() -> bool:
    return any(
        os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on")
        for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


# --------------------------------------------------------------------------- model loading


def load_unsloth(config: Config, source: str) -> tuple[Any, Any]:
    """4-bit base model + LoRA through unsloth (CUDA only)."""
    import unsloth  # noqa: F401  - must be imported before transformers/trl/peft to patch them
    from unsloth import FastLanguageModel

    ft = config.finetune
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=source,
            max_seq_length=ft.max_seq_length,
            dtype=None,
            load_in_4bit=ft.load_in_4bit,
            trust_remote_code=ft.trust_remote_code,  # HF_HUB_OFFLINE is honoured by huggingface_hub itself
        )
    except (OSError, ValueError, RuntimeError) as exc:
        if (
            "Connection" in str(exc)
            or "not found" in str(exc).lower()
            or isinstance(exc, OSError)
            or _offline()
        ):
            raise _missing_model(source, exc) from exc
        raise
    from finetune.formatting import prepare_tokenizer

    if prepare_tokenizer(tokenizer, _chat_template(config)):
        model.resize_token_embeddings(len(tokenizer))
    model = FastLanguageModel.get_peft_model(
        model,
        r=ft.lora.r,
        lora_alpha=ft.lora.alpha,
        lora_dropout=ft.lora.dropout,
        target_modules=list(ft.lora.target_modules),
        bias=ft.lora.bias,
        use_gradient_checkpointing="unsloth"
        if ft.training.gradient_checkpointing == "unsloth"
        else bool(ft.training.gradient_checkpointing),
        random_state=ft.training.seed,
        max_seq_length=ft.max_seq_length,
    )
    return model, tokenizer


def load_transformers(config: Config, source: str) -> tuple[Any, Any]:
    """Base model + LoRA through transformers + peft (4-bit via bitsandbytes only on CUDA)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.formatting import prepare_tokenizer

    ft = config.finetune
    kwargs: dict[str, Any] = {"trust_remote_code": ft.trust_remote_code, "local_files_only": _offline()}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _missing_model(source, exc) from exc
    on_cuda = cuda_available()
    quantized = False
    if on_cuda:
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # one GPU per process: LOCAL_RANK under torchrun / accelerate launch, else the first
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0") or 0)}
        if ft.load_in_4bit:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                log.warning("finetune.load_in_4bit: bitsandbytes is not installed; training LoRA in 16 bit")
            else:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=kwargs["dtype"],
                )
                quantized = True
    else:
        kwargs["dtype"] = torch.float32  # CPU matmuls in half precision are slow or unsupported
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _missing_model(source, exc) from exc
    if prepare_tokenizer(tokenizer, _chat_template(config)):
        model.resize_token_embeddings(len(tokenizer))
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=ft.training.gradient_checkpointing is not False
        )
    lora = LoraConfig(
        r=ft.lora.r,
        lora_alpha=ft.lora.alpha,
        lora_dropout=ft.lora.dropout,
        target_modules=list(ft.lora.target_modules),
        bias=ft.lora.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def _chat_template(config: Config) -> str | None:
    text = config.finetune.chat_template
    if text and not ("{%" in text or "{{" in text):
        path = Path(text)
        if not path.is_file():
            raise FinetuneError(f"finetune.chat_template: {text!r} is neither a Jinja template nor a file")
        return path.read_text(encoding="utf-8")
    return text


# --------------------------------------------------------------------------- data


def prepare_data(
    config: Config, run_dir: Path, *, progress: bool = False, count_tokens: Any = None
) -> tuple[list[Any], dict[str, Any], Path]:
    """Catalog -> examples (written to the run dir); returns (examples, stats, catalog path).

    The training catalog is `finetune.data` (or the synthetic one) less the products of
    `examples.holdout_questions`' held-out questions, plus `synthetic_extra_rows` synthetic rows;
    when it differs from the input it is written to <run_dir>/catalog.train.jsonl, and the index the
    examples' contexts are retrieved from is built from it, so a held-out product is never a
    training answer nor a distractor. `count_tokens` counts the model's tokens (answer_max_tokens).
    """
    from finetune import data as D

    ft = config.finetune
    if ft.data:
        catalog = Path(ft.data)
    else:
        from rag.synthetic import write_synthetic_catalog

        catalog = run_dir / "catalog.jsonl"
        if not catalog.exists():
            write_synthetic_catalog(catalog, rows=ft.synthetic_rows, seed=ft.training.seed)
    rows, summary = D.read_rows(catalog, config, rejects_path=run_dir / "rejects.jsonl")
    held_out = D.holdout_uids(ft.examples.holdout_questions)
    kept = [r for r in rows if r.uid not in held_out]
    extra: list[Any] = []
    if ft.synthetic_extra_rows > 0 and ft.data:
        from rag.synthetic import write_synthetic_catalog

        synthetic = run_dir / "catalog.synthetic.jsonl"
        if not synthetic.exists():
            write_synthetic_catalog(synthetic, rows=ft.synthetic_extra_rows, seed=ft.training.seed)
        extra, _ = D.read_rows(synthetic, config, rejects_path=run_dir / "rejects.synthetic.jsonl")
        known = {r.uid for r in kept}
        extra = [r for r in extra if r.uid not in known]
    removed = len(rows) - len(kept)
    if removed or extra:
        rows = kept + extra
        catalog = run_dir / "catalog.train.jsonl"
        with catalog.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
    retrieve: D.Retrieve | None = None
    if ft.examples.retriever == "project":
        retrieve = D.project_retriever(config, catalog, run_dir)
    examples, stats = D.build_examples(rows, config, retrieve, count_tokens or D.approx_tokens)
    stats["catalog"] = {
        "path": str(catalog),
        "read_summary": summary,
        "held_out_products": len(held_out),
        "held_out_rows_removed": removed,
        "synthetic_extra_rows": len(extra),
        "token_count": "model tokenizer" if count_tokens else "approx (4 chars per token)",
    }
    return examples, stats, catalog


def answer_token_counter(config: Config, run_dir: Path, *, required: bool = True) -> Any:
    """The base model's token counter for answer_max_tokens; None (4 characters a token) for the tiny
    model, whose tokenizer is trained on the examples themselves, and, when not `required` (`rag
    finetune data` only writes examples), where the base model is not on this machine."""
    if config.finetune.tiny_model:
        return None
    try:
        return token_counter(load_tokenizer(config, model_source(config, run_dir)))
    except FinetuneError as exc:
        if required:
            raise
        log.warning("answer_max_tokens counted as 4 characters a token: %s", str(exc).split(";")[0])
        return None


def token_counter(tokenizer: Any) -> Any:
    """text -> the model's token count (no special tokens), for answer_max_tokens."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def tokenize_examples(
    examples: Sequence[Any], tokenizer: Any, config: Config
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Tokenise every example (fitting it into max_seq_length by dropping distractors)."""
    from finetune import data as D
    from finetune.formatting import check_special_tokens, tokenize_example, turn_format

    fmt = turn_format(tokenizer)
    cache: dict[tuple[int, int], int] = {}
    out: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    dropped = {"too_long": 0, "special_token_in_text": 0}
    shrunk = 0
    limit = config.finetune.max_seq_length
    for example in examples:
        current = example
        tokenized = tokenize_example(tokenizer, current.messages, current.answer, fmt)
        while len(tokenized) > limit and current is not None:
            current = D.drop_one_distractor(current, config)
            shrunk += 1
            if current is not None:
                tokenized = tokenize_example(tokenizer, current.messages, current.answer, fmt)
        if current is None:
            dropped["too_long"] += 1
            continue
        if not check_special_tokens(tokenizer, tokenized, current.messages, cache):
            dropped["special_token_in_text"] += 1
            log.warning(
                "example for uid %s dropped: catalog text tokenises into a control token", current.uid
            )
            continue
        out[current.split].append(
            {
                "input_ids": tokenized.input_ids,
                "labels": tokenized.labels,
                "prompt_length": tokenized.prompt_length,
            }
        )
    lengths = [len(e["input_ids"]) for split in out.values() for e in split]
    answers = [len(e["input_ids"]) - e["prompt_length"] for split in out.values() for e in split]
    stats = {
        "end_token": fmt.end_token,
        "dropped": dropped,
        "distractors_dropped_to_fit": shrunk,
        "sequence_tokens": D._describe(lengths),
        "answer_tokens": D._describe(answers),
        "train_tokens": sum(len(e["input_ids"]) for e in out["train"]),
        "train_answer_tokens": sum(len(e["input_ids"]) - e["prompt_length"] for e in out["train"]),
    }
    if not out["train"]:
        raise FinetuneError(f"no training example fits finetune.max_seq_length={limit}; raise it")
    return out, stats


# --------------------------------------------------------------------------- logging


def jsonl_callback(path: Path) -> Any:
    """A TrainerCallback appending every log record (loss, learning rate, grad norm) as a JSON line."""
    from transformers import TrainerCallback

    class JsonlLogger(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.time()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if not logs or not state.is_world_process_zero:
                return
            record = {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "elapsed_s": round(time.time() - self.started, 2),
            }
            record.update({k: (round(v, 8) if isinstance(v, float) else v) for k, v in logs.items()})
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    return JsonlLogger()


def no_pickle_callback() -> Any:
    """Delete each checkpoint's training_args.bin (a pickle of the arguments object) as it is written.

    Resuming does not read it; the rest of a Trainer checkpoint is safetensors, JSON, and tensor-only
    state (optimizer.pt, scheduler.pt, rng_state.pth) that transformers loads with weights_only=True.
    """
    from transformers import TrainerCallback

    class NoPickle(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if not state.is_world_process_zero:  # the checkpoint is rank 0's
                return
            for path in Path(args.output_dir).glob("checkpoint-*/training_args.bin"):
                path.unlink(missing_ok=True)

    return NoPickle()


def plot_loss(log_path: Path, png_path: Path) -> Path | None:
    """Loss (and eval loss) against step, learning rate on a second axis; None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        log.warning("no loss plot: matplotlib is not installed (train_log.jsonl has the figures)")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    lrs = [(r["step"], r["learning_rate"]) for r in records if "learning_rate" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs, strict=True), color="tab:gray", alpha=0.5, linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    ax.set_title("fine-tuning loss")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


# --------------------------------------------------------------------------- training


def sft_config(config: Config, run_dir: Path, backend: str, has_eval: bool) -> Any:
    import torch
    from trl import SFTConfig

    tr = config.finetune.training
    on_cuda = cuda_available()
    precision = tr.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_cuda else "fp32"
    optim = tr.optim
    if optim == "auto":
        import importlib.util

        optim = "adamw_8bit" if on_cuda and importlib.util.find_spec("bitsandbytes") else "adamw_torch"
    batching = tr.batching
    # unsloth sets its own; on a CPU only an explicit `true` turns it on ("unsloth", the default, means
    # the GPU memory saver: on a CPU it only recomputes activations, 1.5x slower per step)
    checkpointing = backend != "unsloth" and (
        tr.gradient_checkpointing is True or (tr.gradient_checkpointing == "unsloth" and on_cuda)
    )
    distributed: dict[str, Any] = {}
    if world_size() > 1:
        # DDP over the processes torchrun / accelerate launch started: NCCL on GPUs; on CPUs accelerate
        # sets up a process group only when told the run is a CPU one, and gloo is the backend that works
        # under torchrun (not MPI). Every LoRA weight takes part in every forward pass, so DDP need not
        # search the graph for unused parameters (that search also clashes with gradient checkpointing).
        distributed = {"ddp_find_unused_parameters": False}
        if not on_cuda:
            distributed.update(use_cpu=True, ddp_backend="gloo")
    return SFTConfig(
        **distributed,
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=tr.batch_size,
        per_device_eval_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        learning_rate=tr.learning_rate,
        num_train_epochs=tr.epochs,
        max_steps=tr.max_steps,
        warmup_steps=tr.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        max_grad_norm=tr.max_grad_norm,
        weight_decay=tr.weight_decay,
        lr_scheduler_type=tr.lr_scheduler,
        optim=optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=tr.logging_steps,
        save_strategy="steps",
        save_steps=tr.save_steps,
        save_total_limit=tr.save_total_limit,
        eval_strategy="steps" if (has_eval and tr.eval_steps) else "no",
        eval_steps=tr.eval_steps,
        seed=tr.seed,
        data_seed=tr.seed,
        gradient_checkpointing=checkpointing,
        report_to="none",
        # The dataset is tokenised and fitted to max_seq_length already; with padding-free batching
        # trl requires max_length=None (it would not enforce it anyway).
        max_length=None if batching == "padding_free" else config.finetune.max_seq_length,
        padding_free=batching == "padding_free",
        packing=batching == "packing",
        packing_strategy="bfd",
        completion_only_loss=False,  # labels are already -100 on the prompt
        dataset_num_proc=None,
        remove_unused_columns=True,
        prediction_loss_only=True,  # only eval_loss is used; no vocabulary-wide logits kept per example
    )


def answer_only_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[Any, Any]:
    """The causal-LM loss with the LM head applied only where a labelled token is predicted.

    The prompt (system, sources, question) is most of every example and carries no loss, yet the
    plain forward pass multiplies every position by the vocabulary-wide LM head (49k x 576 for
    SmolLM2) and soft-maxes it. Only the positions whose next token is labelled reach the head
    (`logits_to_keep` takes those indices), so the CPU step is about a fifth faster. The result is
    the same loss as transformers' ForCausalLMLoss (sum over labelled tokens / their count, or
    / num_items_in_batch under gradient accumulation); tests/test_finetune_targets.py checks it.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    shifted = labels[:, 1:]
    keep = (shifted != -100).any(dim=0).nonzero().squeeze(-1)
    outputs = model(
        **{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep, use_cache=False
    )
    logits = outputs.logits.float()
    target = shifted[:, keep].to(logits.device)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (target != -100).sum()
    if isinstance(count, torch.Tensor):
        count = count.to(loss.device)
    return loss / count, outputs


def trainer_class() -> type:
    """trl's SFTTrainer, with an answer-only loss where its fused LM head cannot run.

    trl 1.15 computes the SFT loss with a Triton kernel over vocabulary chunks (no full logits), on
    CUDA/XPU only: on a CPU (no Triton) that path fails. There this subclass computes the same loss
    from the same labels with `answer_only_loss` (the -100 masking and num_items_in_batch
    normalisation are transformers'), so the CPU and GPU paths share the trainer, collator and data.
    """
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    class CatalogSFTTrainer(SFTTrainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            fused_ok = getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None and inputs[
                "input_ids"
            ].device.type in ("cuda", "xpu")
            if fused_ok:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = answer_only_loss(model, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return CatalogSFTTrainer


def _run_inputs(
    config: Config, run_dir: Path, backend: str, main: bool, progress: bool
) -> tuple[list[Any], dict[str, Any], str]:
    """The examples, their statistics (rank 0 only; empty elsewhere) and the base model's source.

    Rank 0 alone writes the run directory's inputs (catalog, examples, the run's index, the tiny base
    model); the other ranks wait at a barrier, then read the very examples it wrote."""
    from finetune.data import read_examples, write_examples

    sync = _process_group(backend)  # a barrier across torchrun's processes; a no-op alone
    stats: dict[str, Any] = {}
    if main:
        examples, stats, _ = prepare_data(
            config, run_dir, progress=progress, count_tokens=answer_token_counter(config, run_dir)
        )
        for split in ("train", "validation"):
            write_examples([e for e in examples if e.split == split], run_dir / f"examples.{split}.jsonl")
        source = model_source(config, run_dir, _tokenizer_texts(examples))
    sync()
    if not main:
        examples = [
            e for split in ("train", "validation") for e in read_examples(run_dir / f"examples.{split}.jsonl")
        ]
        source = model_source(config, run_dir, _tokenizer_texts(examples))  # built by rank 0: only found
    return examples, stats, source


def train(config: Config, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run one fine-tuning job; returns the summary also written to run.json."""
    ft = config.finetune
    run_dir = Path(ft.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    backend = resolve_backend(config)
    if backend == "unsloth":
        import unsloth  # noqa: F401  - patch transformers/trl before they are imported below

    started = time.time()
    if ft.training.num_threads:
        import torch

        torch.set_num_threads(ft.training.num_threads)
    main = is_main_process()
    examples, stats, source = _run_inputs(config, run_dir, backend, main, progress)
    model, tokenizer = (load_unsloth if backend == "unsloth" else load_transformers)(config, source)
    model.config.use_cache = False  # a cached forward pass over a packed row mixes its examples
    tokenized, token_stats = tokenize_examples(examples, tokenizer, config)
    if main:
        stats["tokens"] = token_stats
        (run_dir / "data_stats.json").write_text(
            json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")

    from datasets import Dataset

    def to_dataset(items: list[dict[str, Any]]) -> Any:
        return Dataset.from_dict(
            {"input_ids": [e["input_ids"] for e in items], "labels": [e["labels"] for e in items]}
        )

    train_ds = to_dataset(tokenized["train"])
    eval_ds = to_dataset(tokenized["validation"]) if tokenized["validation"] else None
    args = sft_config(config, run_dir, backend, eval_ds is not None)
    args.disable_tqdm = not progress
    log_path = run_dir / "train_log.jsonl"
    checkpoint = None
    if resume:
        from transformers.trainer_utils import get_last_checkpoint

        ckpt_dir = run_dir / "checkpoints"
        checkpoint = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if checkpoint is None:
            log.warning("--resume: no checkpoint in %s; starting from the beginning", ckpt_dir)
    if main and not resume and log_path.exists():
        log_path.unlink()
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[jsonl_callback(log_path), no_pickle_callback()],
    )
    train_started = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.time() - train_started
    metrics: dict[str, Any] = dict(result.metrics)
    if eval_ds is not None:
        last_eval = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), None)
        if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
            metrics.update({k: v for k, v in last_eval.items() if k.startswith("eval_")})  # no second pass
        else:
            metrics.update(trainer.evaluate())
    adapter_dir = run_dir / "adapter"
    png = None
    if main:  # one writer: the trained weights are the same on every rank (DDP averages the gradients)
        model.save_pretrained(str(adapter_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(adapter_dir))
        _record_base_model(adapter_dir, ft.base_model if not ft.tiny_model else source)
        png = plot_loss(log_path, run_dir / "loss.png") if log_path.exists() else None
    summary = {
        "backend": backend,
        "world_size": int(trainer.args.world_size),
        "base_model": source,
        "run_dir": str(run_dir),
        "adapter": str(adapter_dir),
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.time() - started, 2),
        "resumed_from": checkpoint,
        "train_examples": len(train_ds),
        "validation_examples": len(eval_ds) if eval_ds is not None else 0,
        "final_loss": next((r.get("loss") for r in reversed(trainer.state.log_history) if "loss" in r), None),
        "eval_loss": metrics.get("eval_loss"),
        "loss_plot": str(png) if png else None,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    if main:
        (run_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    trainer.accelerator.wait_for_everyone()  # no rank returns before the adapter and run.json exist
    return summary


def _process_group(backend: str) -> Any:
    """A barrier over the job's processes (torchrun / accelerate launch), or a no-op for one process.

    The process group is accelerate's (the one the Trainer then uses): gloo on CPUs, NCCL on GPUs.
    """
    if world_size() == 1:
        return lambda: None
    from accelerate import PartialState

    on_cuda = cuda_available()
    state = PartialState(cpu=not on_cuda, **({} if on_cuda else {"backend": "gloo"}))
    if state.num_processes != world_size():
        raise FinetuneError(
            f"WORLD_SIZE={world_size()} but accelerate set up {state.num_processes} process(es); "
            "launch multi-process training with `torchrun` or `accelerate launch` (docs/finetune.md)"
        )
    if state.is_main_process:
        log.info(
            "distributed fine-tuning: %d processes, backend %s, %s",
            state.num_processes,
            backend,
            state.backend,
        )
    return state.wait_for_everyone


def _tokenizer_texts(examples: Sequence[Any]) -> list[str]:
    """Text the tiny model's tokenizer is trained on: the prompts and answers it will see."""
    texts: list[str] = []
    for e in examples:
        texts.extend(m["content"] for m in e.messages)
        texts.append(e.answer)
    return texts


def _record_base_model(adapter_dir: Path, source: str) -> None:
    """Make adapter_config.json name the base model as the user gave it (a path or hub id)."""
    path = adapter_dir / "adapter_config.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = source
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
