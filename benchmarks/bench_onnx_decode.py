"""Experiment (issue 17, not a product path yet): SmolLM2's decoding step in ONNX Runtime on this CPU.

    .venv/bin/python benchmarks/bench_onnx_decode.py --prompt-tokens 1000 --new-tokens 64 --out results/bench_onnx_decode.json

On 2 cores the torch paths stop near 24 tokens/s with int8 weights, held by the per-op cost of 30
small layers (docs/performance.md#llm-decoding). This measures what ONNX Runtime does with the same
weights: a one-module Llama step written here over the loaded model's own layers (embedding, RMS
norm, rotary positions, grouped-query attention over an explicit past K/V, SiLU MLP, tied head),
checked against the model's logits, exported with `torch.onnx.export` (the TorchScript exporter),
then run in float32 and after `onnxruntime.quantization.quantize_dynamic` (int8 weights). Per
runtime: prefill of the prompt (time to first token), decode tokens/s over `--new-tokens` greedy
tokens, and whether those tokens equal plain `model.generate`'s, which runs in the same process as
the baseline. Two decoding steps: "whole K/V", whose past K/V goes in and out of every step whole
(about 90 MB of copies a token at 1,000 tokens), and "K/V buffer", which reads a preallocated
cache of prompt + new tokens (positions past `length` masked), attends to the past and the new
token separately, grouped by K/V head, and returns only the new token's K/V, which the loop writes
into the buffer: no copy of the past. The prompt is prefilled by the first step in both cases.
The exported files go to `--work` (about 650 MB float32, 170 MB int8 per step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _step_modules(model: Any) -> tuple[Any, Any, tuple[int, int, int]]:
    """The two decoding steps over `model`'s own layers, and (layers, kv_heads, head_dim).

    * whole K/V: (ids [B,S], pos [S], past_k/past_v [layers,B,kv_heads,T,head_dim]) -> (last logits,
      past + new K, past + new V);
    * K/V buffer: (ids [1,S], pos [S], length [1], k_buf/v_buf [layers,1,kv_heads,Tmax,head_dim]) ->
      (last logits, the new tokens' K, V), attending to the first `length` buffer positions and the new ones.
    """
    import torch

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = cfg.hidden_size // heads
    group = heads // kv_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":  # e.g. Llama-3's scaled rotary positions
        raise SystemExit(
            f"bench_onnx_decode: rope_type {rope['rope_type']!r} is not written here (default only)"
        )
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    eps = float(cfg.rms_norm_eps)
    scale = 1.0 / math.sqrt(dim)

    class Llama(torch.nn.Module):
        """What both steps share: norms, rotary positions, the projections, the MLP and the head."""

        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = model.model, model.lm_head
            self.register_buffer("inv", 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)))

        @staticmethod
        def norm(x: Any, weight: Any) -> Any:
            return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

        def rotary(self, pos: Any) -> Any:
            freqs = pos.float()[:, None] * self.inv[None, :]
            angles = torch.cat([freqs, freqs], -1)
            cos, sin = angles.cos()[None, None], angles.sin()[None, None]
            return lambda t: t * cos + torch.cat([-t[..., dim // 2 :], t[..., : dim // 2]], -1) * sin

        def qkv(self, layer: Any, x: Any, rotate: Any) -> tuple[Any, Any, Any]:
            """The layer's rotated queries [B,heads,S,D], keys and values [B,kv_heads,S,D]."""
            attn, (batch, new) = layer.self_attn, x.shape[:2]
            h = self.norm(x, layer.input_layernorm.weight)
            q = rotate(attn.q_proj(h).view(batch, new, heads, dim).transpose(1, 2))
            k = rotate(attn.k_proj(h).view(batch, new, kv_heads, dim).transpose(1, 2))
            return q, k, attn.v_proj(h).view(batch, new, kv_heads, dim).transpose(1, 2)

        def rest(self, layer: Any, x: Any, out: Any) -> Any:
            """The layer after attention: output projection, residual, MLP, residual."""
            batch, new = x.shape[:2]
            x = x + layer.self_attn.o_proj(out.transpose(1, 2).reshape(batch, new, heads * dim))
            mlp, h = layer.mlp, self.norm(x, layer.post_attention_layernorm.weight)
            return x + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))

        def logits(self, x: Any) -> Any:
            return self.head(self.norm(x[:, -1:], self.body.norm.weight))[:, -1]

    class WholeStep(Llama):
        def forward(self, ids: Any, pos: Any, past_k: Any, past_v: Any) -> Any:
            x, rotate = self.body.embed_tokens(ids), self.rotary(pos)
            new, past = ids.shape[1], past_k.shape[3]
            mask = torch.where(
                torch.arange(past + new)[None, :] <= torch.arange(new)[:, None] + past, 0.0, float("-inf")
            )
            keys, values = [], []
            for i, layer in enumerate(self.body.layers):
                q, k, v = self.qkv(layer, x, rotate)
                k, v = torch.cat([past_k[i], k], 2), torch.cat([past_v[i], v], 2)
                keys.append(k)
                values.append(v)
                kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
                x = self.rest(layer, x, torch.softmax(q @ kr.transpose(-1, -2) * scale + mask, -1) @ vr)
            return self.logits(x), torch.stack(keys), torch.stack(values)

    class BufferStep(Llama):
        def forward(self, ids: Any, pos: Any, length: Any, k_buf: Any, v_buf: Any) -> Any:
            x, rotate = self.body.embed_tokens(ids), self.rotary(pos)
            new, width = ids.shape[1], k_buf.shape[3]
            past_mask = torch.where(torch.arange(width)[None, :] < length, 0.0, float("-inf"))
            new_mask = torch.where(
                torch.arange(new)[None, :] <= torch.arange(new)[:, None], 0.0, float("-inf")
            )
            keys, values = [], []
            for i, layer in enumerate(self.body.layers):
                q, k, v = self.qkv(layer, x, rotate)
                keys.append(k)
                values.append(v)
                grouped = q.reshape(1, kv_heads, group * new, dim)  # no repeat of the K/V heads
                past = grouped @ k_buf[i].transpose(-1, -2) * scale + past_mask
                recent = (grouped @ k.transpose(-1, -2) * scale).view(1, kv_heads, group, new, new) + new_mask
                weights = torch.softmax(torch.cat([past, recent.view(1, kv_heads, group * new, new)], -1), -1)
                out = weights[..., :width] @ v_buf[i] + weights[..., width:] @ v
                x = self.rest(layer, x, out.view(1, heads, new, dim))
            return self.logits(x), torch.stack(keys), torch.stack(values)

    return WholeStep().eval(), BufferStep().eval(), (cfg.num_hidden_layers, kv_heads, dim)


def _prefill(session: Any, prompt: np.ndarray, shape: tuple[int, int, int]) -> tuple[Any, Any, Any, float]:
    """The prompt through the whole-K/V step from an empty past: (logits, K, V, seconds)."""
    layers, kv_heads, dim = shape
    empty = np.zeros((layers, 1, kv_heads, 0, dim), np.float32)
    t0 = time.perf_counter()
    logits, keys, values = session.run(
        None, {"ids": prompt, "pos": np.arange(prompt.shape[1]), "pk": empty, "pv": empty.copy()}
    )
    return logits, keys, values, time.perf_counter() - t0


def _result(prefill_s: float, decode_s: float, tokens: list[int]) -> dict[str, Any]:
    return {
        "prefill_s": round(prefill_s, 3),
        "decode_tokens_per_s": round((len(tokens) - 1) / decode_s, 1),
        "tokens": tokens,
    }


def _decode_buffer(
    prefill: Any, session: Any, prompt: np.ndarray, new_tokens: int, shape: tuple[int, int, int]
) -> dict[str, Any]:
    """Prefill with the whole-K/V step, then decode on the buffer step, writing each new K/V in place."""
    n = prompt.shape[1]
    t0 = time.perf_counter()
    logits, keys, values, _ = _prefill(prefill, prompt, shape)
    k_buf = np.zeros((*keys.shape[:3], n + new_tokens, keys.shape[4]), np.float32)
    v_buf = np.zeros_like(k_buf)
    k_buf[:, :, :, :n], v_buf[:, :, :, :n] = keys, values
    prefill_s = time.perf_counter() - t0  # the copy into the buffer counts as prefill
    tokens = [int(logits.argmax(-1)[0])]
    t0 = time.perf_counter()
    for at in range(n, n + new_tokens - 1):
        feed = {"ids": np.array([[tokens[-1]]]), "pos": np.array([at]), "length": np.array([at])}
        logits, key, value = session.run(None, {**feed, "pk": k_buf, "pv": v_buf})
        k_buf[:, :, :, at : at + 1], v_buf[:, :, :, at : at + 1] = key, value
        tokens.append(int(logits.argmax(-1)[0]))
    return _result(prefill_s, time.perf_counter() - t0, tokens)


def _decode(session: Any, prompt: np.ndarray, new_tokens: int, shape: tuple[int, int, int]) -> dict[str, Any]:
    """Prefill and decode on the whole-K/V step (the past goes in and out of every step)."""
    logits, keys, values, prefill_s = _prefill(session, prompt, shape)
    tokens = [int(logits.argmax(-1)[0])]
    t0 = time.perf_counter()
    for at in range(prompt.shape[1], prompt.shape[1] + new_tokens - 1):
        feed = {"ids": np.array([[tokens[-1]]]), "pos": np.array([at]), "pk": keys, "pv": values}
        logits, keys, values = session.run(None, feed)
        tokens.append(int(logits.argmax(-1)[0]))
    return _result(prefill_s, time.perf_counter() - t0, tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="a model name `rag model pull` knows, or a directory"
    )
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--work", default="bench_out/onnx_decode")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForCausalLM

    from rag.models import resolve_model

    path = Path(args.model) if Path(args.model).is_dir() else Path(resolve_model(args.model, "--model"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, model.config.vocab_size - 100, size=(1, args.prompt_tokens)).astype(np.int64)
    step, buffer_step, shape = _step_modules(model)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp32, int8 = work / "step.onnx", work / "step_int8.onnx"
    with torch.inference_mode():
        t0 = time.perf_counter()
        baseline = model.generate(
            torch.from_numpy(prompt),
            max_new_tokens=args.new_tokens,
            do_sample=False,
            min_new_tokens=args.new_tokens,
        )
        generate_s = time.perf_counter() - t0
        want = baseline[0, prompt.shape[1] :].tolist()
        layers, kv_heads, dim = shape
        empty = torch.zeros(layers, 1, kv_heads, 0, dim)
        logits, _k, _v = step(torch.from_numpy(prompt[:, :64]), torch.arange(64), empty, empty)
        max_diff = float((logits - model(torch.from_numpy(prompt[:, :64])).logits[:, -1]).abs().max())
    if not fp32.exists():
        past = torch.zeros(layers, 1, kv_heads, 4, dim)
        torch.onnx.export(
            step,
            (torch.from_numpy(prompt[:, :1]), torch.arange(4, 5), past, past),
            str(fp32),
            dynamo=False,
            input_names=["ids", "pos", "pk", "pv"],
            output_names=["logits", "nk", "nv"],
            opset_version=17,
            dynamic_axes={
                "ids": {0: "b", 1: "s"},
                "pos": {0: "s"},
                "pk": {1: "b", 3: "t"},
                "pv": {1: "b", 3: "t"},
                "nk": {1: "b", 3: "t2"},
                "nv": {1: "b", 3: "t2"},
                "logits": {0: "b"},
            },
        )
    if not int8.exists():
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    buf32, buf8 = work / "buffer_step.onnx", work / "buffer_step_int8.onnx"
    if not buf32.exists():
        buffer = torch.zeros(layers, 1, kv_heads, 8, dim)
        torch.onnx.export(
            buffer_step,
            (torch.from_numpy(prompt[:, :1]), torch.arange(1), torch.tensor([0]), buffer, buffer),
            str(buf32),
            dynamo=False,
            input_names=["ids", "pos", "length", "pk", "pv"],
            output_names=["logits", "nk", "nv"],
            opset_version=17,
            dynamic_axes={
                "ids": {1: "s"},
                "pos": {0: "s"},
                "pk": {3: "t"},
                "pv": {3: "t"},
                "nk": {3: "s"},
                "nv": {3: "s"},
            },
        )
    if not buf8.exists():
        quantize_dynamic(str(buf32), str(buf8), weight_type=QuantType.QInt8)
    result: dict[str, Any] = {
        "model": path.name,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "step_vs_model_max_logit_diff": max_diff,
        "plain_generate": {
            "seconds": round(generate_s, 2),
            "tokens_per_s_incl_prefill": round(args.new_tokens / generate_s, 1),
        },
    }

    def session(file: Path) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if args.threads:
            options.intra_op_num_threads = args.threads
        return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

    runs = (
        ("onnx float32, whole K/V", fp32, None),
        ("onnx int8, whole K/V", int8, None),
        ("onnx float32, K/V buffer", fp32, buf32),
        ("onnx int8, K/V buffer", int8, buf8),
    )
    for name, file, buffer_file in runs:
        if buffer_file is None:
            run = _decode(session(file), prompt, args.new_tokens, shape)
        else:
            run = _decode_buffer(session(file), session(buffer_file), prompt, args.new_tokens, shape)
        got = run.pop("tokens")
        run["same_tokens_as_generate"] = sum(a == b for a, b in zip(got, want, strict=False)) / len(want)
        result[name] = run
        print(name, json.dumps(run), flush=True)
    print("plain generate", json.dumps(result["plain_generate"]), "max logit diff", max_diff)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
