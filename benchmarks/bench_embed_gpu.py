"""Title-embedding throughput on a CUDA GPU: all-MiniLM-L6-v2's shape, fp32 vs fp16/bf16, batch sizes.

    python benchmarks/bench_embed_gpu.py --tokenizer-dir .embedtok --titles 200000 --out bench_out

The GPU machine cannot download weights and the bundled model (90 MB) is too big to travel with the
working tree, so the model is a random-init `BertModel` with all-MiniLM-L6-v2's config (hidden 384,
6 layers, 12 heads, intermediate 1536, vocab 30522): the same arithmetic, the same speed. The
tokenizer and sentence-transformers files (small) come from `--tokenizer-dir`, a copy of the bundled
model's directory without `model.safetensors`; the weights are written there on the GPU machine.
Titles are synthetic catalog titles (`rag.synthetic`, real-length product and book titles).

Two families of runs, each over all titles, after one untimed warm-up pass:

- `st`: `SentenceTransformer.encode(..., normalize_embeddings=True)`, exactly what
  `index.embedder.SentenceTransformerEmbedder.embed` calls (tokenisation on the CPU per batch,
  ST's own length sorting, vectors back on the host), at fp32 / fp16 / bf16 and several batch sizes;
- `raw`: titles tokenised once up front (timed separately), sorted by length, then only the GPU work
  (BERT forward, mean pooling, L2 normalisation, copy to host) per batch; optionally torch.compile.

Reported per run: titles/s, peak GPU memory (torch.cuda.max_memory_allocated), and for half-precision
runs the largest 1 - cosine against fp32 vectors of the same titles (correctness, not just speed).
Results go to OUT/bench_embed_gpu.json; a table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_titles(n: int, seed: int = 0) -> list[str]:
    from rag.synthetic import generate_records

    return [str(r["title"]) for r in generate_records(n, seed=seed)]


def write_random_model(directory: Path, seed: int = 0) -> None:
    """Random-init BertModel weights with the directory's config.json, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel

    if (directory / "model.safetensors").exists():
        return
    torch.manual_seed(seed)
    model = BertModel(BertConfig.from_pretrained(directory))
    model.save_pretrained(directory, safe_serialization=True)


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib(reset: bool = False) -> float:
    import torch

    if not torch.cuda.is_available():
        return 0.0
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() / 2**30


def run_st(
    model_dir: Path, titles: list[str], dtype: str, batch: int, reference: Any | None, device: str = "cuda"
) -> tuple[dict[str, Any], Any]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    model.max_seq_length = 64  # embedding.max_seq_length's default
    if dtype != "fp32":
        model.to(_dtype(dtype))
    model.encode(titles[: batch * 2], batch_size=batch, convert_to_numpy=True, normalize_embeddings=True)
    _sync()
    _peak_gib(reset=True)
    t = time.perf_counter()
    vectors = model.encode(titles, batch_size=batch, convert_to_numpy=True, normalize_embeddings=True)
    _sync()
    seconds = time.perf_counter() - t
    vectors = np.asarray(vectors, dtype=np.float32)
    out = {
        "family": "st",
        "dtype": dtype,
        "batch": batch,
        "titles": len(titles),
        "seconds": seconds,
        "titles_per_s": len(titles) / seconds,
        "peak_gib": _peak_gib(),
    }
    if reference is not None:
        out["max_1_minus_cos"] = float(1.0 - (vectors * reference).sum(axis=1).min())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out, vectors


def tokenize(model_dir: Path, titles: list[str]) -> tuple[list[list[int]], float]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    t = time.perf_counter()
    ids = tokenizer(titles, truncation=True, max_length=64, padding=False)["input_ids"]
    return ids, time.perf_counter() - t


def run_raw(
    model_dir: Path,
    ids: list[list[int]],
    tokenize_s: float,
    dtype: str,
    batch: int,
    *,
    attn: str,
    compile_model: bool,
    sort: bool,
    reference: Any | None,
    device: str = "cuda",
) -> tuple[dict[str, Any], Any]:
    import numpy as np
    import torch
    from transformers import BertModel

    model = (
        BertModel.from_pretrained(
            str(model_dir), dtype=_dtype(dtype), attn_implementation=attn, add_pooling_layer=False
        )
        .to(device)
        .eval()
    )
    forward = torch.compile(model, dynamic=True) if compile_model else model
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort else list(range(len(ids)))
    # one padded (B, L) block per batch, built on the host once (tokenisation is timed separately)
    blocks = []
    for start in range(0, len(order), batch):
        chunk = [ids[i] for i in order[start : start + batch]]
        width = max(len(x) for x in chunk)
        block = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, x in enumerate(chunk):
            block[row, : len(x)] = x
            mask[row, : len(x)] = 1
        pair = (torch.from_numpy(block), torch.from_numpy(mask))
        blocks.append(tuple(x.pin_memory() for x in pair) if device == "cuda" else pair)

    def one_pass() -> torch.Tensor:
        outs = []
        with torch.inference_mode():
            for host_block, host_mask in blocks:
                block = host_block.to(device, non_blocking=True)
                mask = host_mask.to(device, non_blocking=True)
                hidden = forward(input_ids=block, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1).float() / m.sum(1).float().clamp(min=1.0)
                # a blocking copy: a non_blocking one to pageable memory could be read before it lands
                outs.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        _sync()
        return torch.cat(outs)

    t = time.perf_counter()
    one_pass()  # warm-up (and compilation)
    warm_s = time.perf_counter() - t
    _peak_gib(reset=True)
    t = time.perf_counter()
    vectors = one_pass().numpy()
    seconds = time.perf_counter() - t
    restored = np.empty_like(vectors)
    restored[np.asarray(order)] = vectors
    n = len(ids)
    out = {
        "family": "raw",
        "dtype": dtype,
        "batch": batch,
        "attn": attn,
        "compile": compile_model,
        "sorted": sort,
        "titles": n,
        "seconds": seconds,
        "titles_per_s": n / seconds,
        "warmup_s": warm_s,
        "tokenize_s": tokenize_s,
        "end_to_end_titles_per_s": n / (seconds + tokenize_s),
        "peak_gib": _peak_gib(),
    }
    if reference is not None:
        out["max_1_minus_cos"] = float(1.0 - (restored * reference).sum(axis=1).min())
    model = forward = None  # drop the weights (one_pass holds them too) before emptying the cache
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out, restored


def tokenize_variants(model_dir: Path, titles: list[str], workers: int) -> list[dict[str, Any]]:
    """Titles/s of the tokenisation step alone: transformers' call vs the Rust backend, with threads."""
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(64)
    fast = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets
    out = []

    def timed(name: str, fn: Any) -> None:
        t = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t
        out.append(
            {"family": "tokenize", "variant": name, "titles_per_s": len(titles) / seconds, "seconds": seconds}
        )

    timed("transformers_call", lambda: tokenizer(titles, truncation=True, max_length=64)["input_ids"])
    timed("backend_fast_ids", lambda: [e.ids for e in fast(titles)])
    chunks = [titles[i : i + 4096] for i in range(0, len(titles), 4096)]
    with ThreadPoolExecutor(workers) as pool:  # the Rust part releases the GIL
        timed(
            f"backend_fast_ids_{workers}threads",
            lambda: [[e.ids for e in encs] for encs in pool.map(fast, chunks)],
        )
    return out


def run_pipelined(
    model_dir: Path,
    titles: list[str],
    dtype: str,
    batch: int,
    workers: int,
    attn: str,
    reference: Any | None,
    device: str = "cuda",
) -> tuple[dict[str, Any], Any]:
    """End to end as an embedder would do it: titles ordered by character length (a free proxy for token
    length), tokenised in chunks by a thread pool (Rust, GIL released) while the GPU embeds the previous ones."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(64)
    backend.enable_padding(pad_id=tokenizer.pad_token_id or 0)  # pads each chunk to its longest title
    fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
    model = (
        BertModel.from_pretrained(
            str(model_dir), dtype=_dtype(dtype), attn_implementation=attn, add_pooling_layer=False
        )
        .to(device)
        .eval()
    )

    def encode(chunk: list[str]) -> tuple[Any, Any]:
        encs = fast(chunk)
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long)
        return ids.pin_memory() if device == "cuda" else ids, mask.pin_memory() if device == "cuda" else mask

    def one_pass() -> Any:
        order = sorted(range(len(titles)), key=lambda i: len(titles[i]))
        chunks = [[titles[i] for i in order[s : s + batch]] for s in range(0, len(order), batch)]
        outs = []
        with ThreadPoolExecutor(workers) as pool, torch.inference_mode():
            for host_ids, host_mask in pool.map(encode, chunks):
                ids, mask = host_ids.to(device, non_blocking=True), host_mask.to(device, non_blocking=True)
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1).float() / m.sum(1).float().clamp(min=1.0)
                outs.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        _sync()
        vectors = torch.cat(outs).numpy()
        restored = np.empty_like(vectors)
        restored[np.asarray(order)] = vectors
        return restored

    one_pass()
    _peak_gib(reset=True)
    t = time.perf_counter()
    vectors = one_pass()
    seconds = time.perf_counter() - t
    out = {
        "family": "pipelined",
        "dtype": dtype,
        "batch": batch,
        "attn": attn,
        "workers": workers,
        "titles": len(titles),
        "seconds": seconds,
        "titles_per_s": len(titles) / seconds,
        "end_to_end_titles_per_s": len(titles) / seconds,
        "peak_gib": _peak_gib(),
    }
    if reference is not None:
        out["max_1_minus_cos"] = float(1.0 - (vectors * reference).sum(axis=1).min())
    return out, vectors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer-dir",
        default=".embedtok",
        help="copy of the bundled model directory (tokenizer + sentence-transformers files)",
    )
    parser.add_argument("--titles", type=int, default=200_000)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only: fp32 reference, raw fp16 eager, tokenisation variants, pipelined end to end",
    )
    args = parser.parse_args(argv)

    import torch

    src = Path(args.tokenizer_dir)
    if not (src / "tokenizer.json").exists():
        raise SystemExit(
            f"--tokenizer-dir {src}: no tokenizer.json; copy the bundled model's small files there "
            "(see docs/performance-gpu.md)"
        )
    dev = args.device
    model_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "minilm-random"
    if not model_dir.exists():
        import shutil

        shutil.copytree(src, model_dir)
    write_random_model(model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    titles = make_titles(args.titles)
    print(
        f"{len(titles)} titles in {time.perf_counter() - t:.1f}s, mean {sum(map(len, titles)) / len(titles):.1f} chars",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    info = {
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "torch": torch.__version__,
        "titles": len(titles),
    }

    def record(result: dict[str, Any]) -> None:
        results.append(result)
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
        print(line, flush=True)
        (out / "bench_embed_gpu.json").write_text(json.dumps({"info": info, "results": results}, indent=2))

    ids, tokenize_s = tokenize(model_dir, titles)
    lengths = sorted(len(x) for x in ids)
    info.update(
        {
            "tokenize_s": tokenize_s,
            "tokens_p50": lengths[len(lengths) // 2],
            "tokens_p99": lengths[int(len(lengths) * 0.99)],
            "tokens_mean": sum(lengths) / len(lengths),
        }
    )
    print(
        f"tokenised in {tokenize_s:.2f}s ({len(titles) / tokenize_s:.0f} titles/s); tokens p50 "
        f"{info['tokens_p50']} p99 {info['tokens_p99']}",
        flush=True,
    )

    # fp32 references for the correctness column (raw and st order differ; both map back to title order)
    r, ref_raw = run_raw(
        model_dir,
        ids,
        tokenize_s,
        "fp32",
        4096,
        attn="sdpa",
        compile_model=False,
        sort=True,
        reference=None,
        device=dev,
    )
    record(r)
    if args.quick:
        for r in tokenize_variants(model_dir, titles, os.cpu_count() or 8):
            record(r)
        record(
            run_raw(
                model_dir,
                ids,
                tokenize_s,
                "fp16",
                4096,
                attn="eager",
                compile_model=False,
                sort=True,
                reference=ref_raw,
                device=dev,
            )[0]
        )
        for workers, batch in ((os.cpu_count() or 8, 4096), (os.cpu_count() or 8, 8192)):
            record(run_pipelined(model_dir, titles, "fp16", batch, workers, "eager", ref_raw, device=dev)[0])
        for r in results:
            print(
                f"{r['family']:9} {r.get('variant', r.get('dtype'))!s:32} batch={r.get('batch', '-')} "
                f"attn={r.get('attn', '-')} titles/s={r['titles_per_s']:.0f} e2e={r.get('end_to_end_titles_per_s', 0):.0f} "
                f"peak={r.get('peak_gib', 0):.3f} 1-cos={r.get('max_1_minus_cos', 0):.2e}"
            )
        return 0
    for dtype, batch in (("fp16", 1024), ("fp16", 4096), ("fp16", 16384), ("bf16", 4096)):
        record(
            run_raw(
                model_dir,
                ids,
                tokenize_s,
                dtype,
                batch,
                attn="sdpa",
                compile_model=False,
                sort=True,
                reference=ref_raw,
                device=dev,
            )[0]
        )
    record(
        run_raw(
            model_dir,
            ids,
            tokenize_s,
            "fp16",
            4096,
            attn="eager",
            compile_model=False,
            sort=True,
            reference=ref_raw,
            device=dev,
        )[0]
    )
    record(
        run_raw(
            model_dir,
            ids,
            tokenize_s,
            "fp16",
            4096,
            attn="sdpa",
            compile_model=False,
            sort=False,
            reference=ref_raw,
            device=dev,
        )[0]
    )
    # what index/embedder.py runs: sentence-transformers encode (its default batch 256, fp32) vs half + big batch
    r, ref_st = run_st(model_dir, titles, "fp32", 256, None, device=dev)
    record(r)
    for dtype, batch in (("fp16", 256), ("fp16", 1024), ("fp16", 4096), ("bf16", 4096)):
        record(run_st(model_dir, titles, dtype, batch, ref_st, device=dev)[0])
    if not args.no_compile:
        try:
            record(
                run_raw(
                    model_dir,
                    ids,
                    tokenize_s,
                    "fp16",
                    4096,
                    attn="sdpa",
                    compile_model=True,
                    sort=True,
                    reference=ref_raw,
                    device=dev,
                )[0]
            )
        except Exception as exc:  # noqa: BLE001 - compile is optional: report and keep the rest
            print(f"torch.compile run failed: {type(exc).__name__}: {exc}", flush=True)

    print(
        f"\n{info['gpu']}, torch {info['torch']}, {len(titles)} titles, tokens p50 {info['tokens_p50']}, "
        f"tokenize {len(titles) / tokenize_s:.0f} titles/s"
    )
    print(
        f"{'family':6} {'dtype':5} {'batch':>6} {'attn':6} {'comp':5} {'sort':5} {'titles/s':>10} {'e2e/s':>10} "
        f"{'peak GiB':>9} {'1-cos':>9}"
    )
    for r in results:
        print(
            f"{r['family']:6} {r['dtype']:5} {r['batch']:6} {r.get('attn', '-'):6} {r.get('compile', '-')!s:5} "
            f"{r.get('sorted', 'st')!s:5} {r['titles_per_s']:10.0f} {r.get('end_to_end_titles_per_s', r['titles_per_s']):10.0f} "
            f"{r['peak_gib']:9.3f} {r.get('max_1_minus_cos', 0.0):9.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
