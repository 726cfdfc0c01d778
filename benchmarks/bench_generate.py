"""Benchmark: LLM decoding through the `hf` backend, next to plain `model.generate` in the same process.

    .venv/bin/python benchmarks/bench_generate.py                                  # SmolLM2-135M, this CPU
    .venv/bin/python benchmarks/bench_generate.py --dtypes float32,int8 --batch 1,4
    python benchmarks/bench_generate.py --device cuda --compile                     # SmolLM2 on a GPU
    python benchmarks/bench_generate.py --shape llama3-8b --device cuda --prompt-tokens 1500 --compile

Per row: decode tokens/s (aggregate over the batch), time to first token, prefill time, peak memory.
Paths measured, all on one loaded model:
* `plain generate`: `model.generate(ids, max_new_tokens=N)`, transformers' defaults (the baseline);
* `rag generate`: the backend's own generate path (the configured repetition penalty, answer n-gram
  blocker, stop ids; `--compile`: static KV cache + torch.compile);
* `rag stream`: the backend's streaming (time to the first streamed piece, tokens/s while streaming);
* `rag batch B`: `generate_batch` on B prompts of the same length.
Every row decodes exactly N new tokens (`min_new_tokens`), so rates compare; time to first token is
one generate() of 1 new token; decode tokens/s = B * (N - 1) / (t(N) - t(1)).

The prompt is the project's own prompt (rag/prompt.py) over synthetic catalog rows, cut to about
`--prompt-tokens` tokens. `--shape llama3-8b` builds a random-init model of Llama-3-8B's shape in
bfloat16 on the device (as benchmarks/bench_finetune_gpu.py does), with SmolLM2's tokenizer;
`--shape DIR` does the same with the config.json and tokenizer of a model directory (e.g. SmolLM2's
small files, without its weights). `--out`
writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import functools
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_result


def _prompt_request(
    tokenizer: Any, target_tokens: int, config: Any, question: str = "What is this product about?"
) -> Any:
    """A GenerationRequest whose rendered prompt is about `target_tokens` tokens (synthetic rows)."""
    from rag.generators.common import render_prompt
    from rag.prompt import build_messages
    from rag.synthetic import generate_records
    from rag.types import CatalogRow, GenerationRequest, Hit

    rows = [
        CatalogRow(uid=r["uid"], title=r["title"], content=r["content"])
        for r in generate_records(300, seed=7)
        if len(r["content"]) > 1200
    ]
    prompt_config = config.prompt
    prompt_config.max_sources = 5
    best = None
    for chars in range(100, 6000, 50):
        prompt_config.max_chars_per_source = chars
        hits = [Hit(row=r, score=0.9) for r in rows[:5]]
        messages = build_messages(question, hits, prompt_config)
        text, templated = render_prompt(tokenizer, messages)
        n = len(tokenizer(text, add_special_tokens=not templated)["input_ids"])
        best = GenerationRequest(question=question, hits=hits, messages=messages)
        if n >= target_tokens:
            break
    return best


def _peak_memory(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: process peak so far


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    rows: list[dict[str, Any]] = []
    for dtype in args.dtypes.split(","):
        rows.extend(_run_dtype(args, dtype))
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the generator of the last dtype is gone with _run_dtype's frame
    return rows


def _run_dtype(args: argparse.Namespace, dtype: str) -> list[dict[str, Any]]:
    """Every path (plain generate, ours, batches, stream) for one dtype."""
    import torch

    from rag.config import load_config
    from rag.generators.hf import HFGenerator

    rows: list[dict[str, Any]] = []
    sets = [
        f"generator.device={args.device}",
        f"generator.dtype={dtype}",
        f"generator.max_new_tokens={args.new_tokens}",
        f"generator.compile={'true' if args.compile else 'false'}",
        *args.set,
    ]
    config = load_config(args.config, sets)
    generator = HFGenerator(config)
    started = time.perf_counter()
    if args.shape:
        _load_shape(generator, args.shape, args.device, args.tokenizer)
    else:
        generator.warm_up()
    load_s = time.perf_counter() - started
    label = args.label or args.shape or config.generator.model
    request = _prompt_request(generator.tokenizer, args.prompt_tokens, config)
    prompt_ids = generator._prompt_ids(request)
    n = args.new_tokens
    model, device = generator.model, args.device
    inputs = generator._batch_inputs([prompt_ids])
    base = {
        "model": label,
        "device": device,
        "dtype": dtype,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": n,
        "load_s": round(load_s, 2),
        "threads": torch.get_num_threads(),
    }
    print(
        f"{label} on {device}, {dtype}: prompt {len(prompt_ids)} tokens, {n} new tokens, "
        f"loaded in {load_s:.1f} s",
        file=sys.stderr,
    )

    def plain(tokens: int, batch: int = 1) -> None:
        ids = inputs["input_ids"].repeat(batch, 1)
        mask = inputs["attention_mask"].repeat(batch, 1)
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=generator._pad_id(),
            )

    _forward(model, inputs)  # warm-up: the first forward on a GPU also initialises the matmul libraries
    prefill = _timed(lambda: _forward(model, inputs), device, args.repeats)
    paths: list[tuple[str, int, Any]] = [("plain generate", 1, plain)]
    generator.min_new_tokens = n  # every path decodes exactly the tokens asked for

    def ours(tokens: int, batch: int = 1) -> None:
        """The backend's public paths: generate() for one request, generate_batch() for more."""
        copies = [copy.copy(request) for _ in range(batch)]
        for one in copies:
            one.max_new_tokens = tokens
        if batch == 1:
            generator.generate(copies[0])
        else:
            generator.generate_batch(copies, batch)

    paths.append(("rag generate", 1, ours))
    for b in [int(x) for x in args.batch.split(",") if int(x) > 1]:
        paths.append((f"rag batch {b}", b, ours))
        paths.append((f"plain batch {b}", b, plain))
    if args.compile and generator._compiled():
        t0 = time.perf_counter()
        ours(n)  # the first call compiles the decoding step
        base["compile_s"] = round(time.perf_counter() - t0, 1)
    for name, batch, fn in paths:
        try:
            fn(2, batch)  # warm-up (allocations, kernels)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            first = _timed(functools.partial(fn, 1, batch), device, args.repeats)
            full = _timed(functools.partial(fn, n, batch), device, args.repeats)
        except Exception as exc:  # noqa: BLE001 - one failing path must not lose the others' figures
            print(f"  {name} batch {batch}: failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            continue
        rate = batch * (n - 1) / (full - first) if full > first else float("nan")
        rows.append(
            {
                **base,
                "path": name,
                "batch": batch,
                "ttft_s": round(first, 4),
                "prefill_s": round(prefill, 4),
                "total_s": round(full, 3),
                "decode_tok_s": round(rate, 1),
                "peak_mib": round(_peak_memory(device)),
            }
        )
        print(_line(rows[-1]), file=sys.stderr)
    try:
        rows.append(
            {
                **base,
                **_stream_row(generator, request, n, device, args.repeats),
                "prefill_s": round(prefill, 4),
            }
        )
        print(_line(rows[-1]), file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - nor a failing stream the batch figures
        print(f"  rag stream: failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
    return rows


def _forward(model: Any, inputs: dict[str, Any]) -> None:
    import torch

    with torch.inference_mode():
        model(**inputs, use_cache=True, logits_to_keep=1)


def _stream_row(generator: Any, request: Any, n: int, device: str, repeats: int) -> dict[str, Any]:
    """Stream `n` tokens: time to the first piece, and tokens/s from the first piece to the end."""
    firsts, rates, totals = [], [], []
    request.max_new_tokens = n
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        first = None
        for _piece in generator.stream(request):
            if first is None:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        tokens = request.new_tokens or 0
        firsts.append(first or total)
        totals.append(total)
        rates.append(
            (tokens - 1) / (total - first) if first and tokens > 1 and total > first else float("nan")
        )
    # the first run warms the streaming thread up; the medians are over the rest
    return {
        "path": "rag stream",
        "batch": 1,
        "ttft_s": round(statistics.median(firsts[1:]), 4),
        "total_s": round(statistics.median(totals[1:]), 3),
        "decode_tok_s": round(statistics.median(rates[1:]), 1),
        "peak_mib": round(_peak_memory(device)),
    }


def _load_shape(generator: Any, shape: str, device: str, tokenizer_dir: str | None) -> None:
    """A random-init model of a real checkpoint's shape (same arithmetic, so the same speed).

    `shape` is a name from finetune/tiny.py MODEL_SHAPES (SmolLM2's tokenizer, whose ids fit every
    vocab) or a model directory whose config.json and tokenizer are used without its weights (so the
    GPU machine needs only the small files of the pulled SmolLM2)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from finetune.tiny import create_model_of_shape
    from rag.generators.common import stop_strings, stop_token_ids
    from rag.models import resolve_model

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if Path(shape).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or shape)
        config = AutoConfig.from_pretrained(shape)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
        model = model.to(dtype).eval()
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_dir or resolve_model("smollm2-135m", "--shape tokenizer")
        )
        model = create_model_of_shape(shape, dtype=dtype, device=device).eval()
    generator.device = device
    generator.tokenizer = tokenizer
    generator.stop_ids = stop_token_ids(tokenizer)
    generator.stop_texts = stop_strings(tokenizer, generator.stop_ids)
    generator.model = model


def _line(row: dict[str, Any]) -> str:
    return (
        f"  {row['path']:<16} batch {row['batch']:>2}  decode {row['decode_tok_s']:>7} tok/s  "
        f"first token {row['ttft_s'] * 1000:>7.1f} ms  total {row['total_s']:>7.3f} s  peak {row['peak_mib']} MiB"
    )


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per path, with the ratio to plain generate of the same model and dtype."""
    out = [
        "| model | device | dtype | path | batch | prompt | decode tok/s | × plain | first token ms | peak MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {(r["model"], r["dtype"]): r["decode_tok_s"] for r in rows if r["path"] == "plain generate"}
    for r in rows:
        ref = plain.get((r["model"], r["dtype"]))
        ratio = f"{r['decode_tok_s'] / ref:.2f}" if ref and r["batch"] == 1 else ""
        out.append(
            f"| {r['model']} | {r['device']} | {r['dtype']} | {r['path']} | {r['batch']} | {r['prompt_tokens']} | "
            f"{r['decode_tok_s']} | {ratio} | {r['ttft_s'] * 1000:.0f} | {r['peak_mib']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smollm2-chat.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--shape", default=None, help="random-init model of this shape (finetune/tiny.py MODEL_SHAPES)"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer directory for --shape (default: the pulled SmolLM2)"
    )
    parser.add_argument("--label", default=None, help="the model's name in the table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="auto", help="comma-separated generator.dtype values")
    parser.add_argument("--batch", default="1,4", help="comma-separated batch sizes (1 is always run)")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="generator.compile=true (CUDA)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from rag.evaluation.runner import environment, environment_line

    info = environment()
    rows = run(args)
    print(environment_line(info))
    print(table(rows))
    if args.out:
        write_result(args.out, {"environment": info, "args": vars(args), "rows": rows}, announce=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
