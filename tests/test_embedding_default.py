"""`embedding.backend: auto` (the default): onnx int8 on a CPU, torch on CUDA or without onnxruntime.

.venv/bin/python -m pytest tests/test_embedding_default.py -q
"""

from __future__ import annotations

import importlib.util

import pytest

import index.embedder
from index.embedder import resolve_backend
from rag.config import load_config


def test_auto_is_the_default_and_resolves_to_onnx_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config().embedding
    assert config.backend == "auto" and config.onnx_quantize == "int8"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name in ("onnx", "onnxruntime") else real(name, *a),
    )
    resolved = resolve_backend(config)
    assert resolved.backend == "onnx" and resolved is not config and config.backend == "auto"


def test_auto_is_torch_on_cuda_and_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, ["embedding.device=cuda"]).embedding
    assert resolve_backend(config).backend == "torch"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    assert resolve_backend(load_config().embedding).backend == "torch"


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_a_named_backend_is_kept(backend: str) -> None:
    config = load_config(None, [f"embedding.backend={backend}", "embedding.device=cuda"]).embedding
    assert resolve_backend(config) is config


def test_load_embedder_uses_the_resolved_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_onnx(spec, path, is_local, config):
        seen.append(config.backend)
        return "onnx embedder"

    monkeypatch.setattr(index.embedder, "_load_onnx", fake_onnx)
    monkeypatch.setattr(
        index.embedder, "resolve_backend", lambda c: __import__("dataclasses").replace(c, backend="onnx")
    )
    assert index.embedder.load_embedder(load_config().embedding) == "onnx embedder"
    assert seen == ["onnx"]
