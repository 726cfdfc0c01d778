"""The CPU bulk backend: static token vectors distilled from the bundled MiniLM (model2vec).

    rag index distill-static                            # once, offline: ~2-3 min on 2 cores
    rag index build --set embedding.backend=static      # then builds and queries use it

`embedding.backend: static` loads a `StaticEmbedder`. A static model is one vector per word piece: a
title's vector is the mean of its word pieces' vectors, L2-normalised. There is no transformer at run
time, so embedding costs a tokeniser pass and a table look-up (tens of thousands of titles/s on 2
cores instead of a few hundred), at some cost in quality (docs/performance.md has the figures).

The vectors come from model2vec's distillation of `embedding.model` (the bundled all-MiniLM-L6-v2 by
default): every word piece of the vocabulary is passed through the transformer once, the outputs are
reduced by PCA (`embedding.static_pca_dims`, 256 by default; 0 keeps the model's 384) and weighted by
a Zipf/SIF estimate of token frequency. `distill_static` runs it from the local model directory (no hub
access) and writes model2vec's own layout, without pickle:

    model.safetensors   the vectors (float16)          config.json   model2vec's settings
    tokenizer.json      the word-piece tokenizer        modules.json, README.md   written by model2vec
    distill.json        what it was distilled from, with which settings and versions

The directory is `embedding.static_dir` when set (any model2vec directory works), otherwise
`~/.cache/amazontitles-rag/static/<model>-<pca>-<key>`, `key` a hash of the source weights' sizes and
mtimes. It is written under a temporary name and renamed, so a crash never leaves half a model. A build
never distils by itself: a missing model is an error that gives the command to run.

Loading needs only numpy, scipy, safetensors and tokenizers (model2vec is not imported); distilling needs
`model2vec` and `skeletoken` (`pip install .[static]`) and torch + transformers, which the project has.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.model_paths import EmbedderError
from index.query_cache import CachedQueryMixin
from index.query_cache import QueryCache as _QueryCache
from index.query_cache import normalise as _normalise

log = logging.getLogger(__name__)

DISTILL_VERSION = 1  # bump when the recipe changes: old cache entries are then not found
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CHUNK = 16_384  # texts tokenised and pooled at a time: bounded memory for a 2M-title build


class StaticBackendMissing(EmbedderError):
    """model2vec (needed to distil, not to embed) is not installed; the message says how to install it."""


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "amazontitles-rag" / "static"


def _source_key(model_dir: Path, pca_dims: int) -> str:
    """Hash of what the distillation depends on: the source weights (size + mtime) and the settings."""
    parts = [str(model_dir.resolve()), str(pca_dims), str(DISTILL_VERSION)]
    for name in sorted(os.listdir(model_dir)):
        path = model_dir / name
        if path.is_file() and name.endswith((".safetensors", ".bin", ".json", ".txt")):
            stat = path.stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def _source_dir(config: Any) -> Path:
    """The local directory of the transformer the static model is (or would be) distilled from."""
    from index.model_paths import resolve_model_path

    spec = str(config.model).strip()
    path = Path(resolve_model_path(spec)).expanduser()
    if not path.is_dir():
        raise EmbedderError(
            f"embedding.model: {spec!r} is not a local model directory; embedding.backend: static is "
            "distilled from local weights only: set embedding.model to 'bundled:all-MiniLM-L6-v2' or a "
            "sentence-transformers directory (or embedding.static_dir to a model2vec directory)"
        )
    return path


def static_model_dir(config: Any) -> Path:
    """Where the static model of `config` (an EmbeddingConfig) lives: embedding.static_dir, or the cache entry."""
    if getattr(config, "static_dir", None):
        return Path(str(config.static_dir)).expanduser()
    source = _source_dir(config)
    pca = int(getattr(config, "static_pca_dims", 256) or 0)
    spec = str(config.model).strip()
    label = spec.split(":", 1)[1] if spec.startswith("bundled:") else Path(spec).name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "model"
    return default_cache_root() / f"{slug}-pca{pca}-{_source_key(source, pca)}"


def _unk_id(tokenizer: Any) -> int | None:
    """The tokenizer's unknown-token id: model2vec drops it from every text, so do we."""
    token = getattr(tokenizer.model, "unk_token", None)
    if token is not None:
        return tokenizer.token_to_id(token)
    unk = json.loads(tokenizer.to_str()).get("model", {}).get("unk_id")  # Unigram models
    return int(unk) if unk is not None else None


class StaticEmbedder(CachedQueryMixin):
    """Mean of static word-piece vectors, L2-normalised, float32 (the same vectors as model2vec's encode)."""

    def __init__(
        self,
        vectors: np.ndarray,
        tokenizer: Any,
        *,
        name: str,
        weights: np.ndarray | None = None,
        mapping: np.ndarray | None = None,
        max_seq_length: int | None = 64,
        batch_size: int = CHUNK,
        cache_size: int = 1024,
    ) -> None:
        if vectors.ndim != 2 or not vectors.shape[0] or not vectors.shape[1]:
            raise ValueError(f"static model {name}: the vector table has shape {vectors.shape}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # float16 on disk; sums in float32
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self.mapping = None if mapping is None else np.asarray(mapping, dtype=np.int64)
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if max_seq_length:
            tokenizer.enable_truncation(max_length=int(max_seq_length))
        self.unk_id = _unk_id(tokenizer)
        self.name = name
        self.dimension = int(self.vectors.shape[1])
        self.batch_size = int(batch_size)
        self._cache = _QueryCache(cache_size)

    @classmethod
    def from_dir(cls, path: Path, *, name: str, max_seq_length: int | None = 64, cache_size: int = 1024):
        """Load a model2vec directory (model.safetensors + tokenizer.json + config.json): no pickle, no torch."""
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        for needed in (MODEL_FILE, TOKENIZER_FILE):
            if not (path / needed).is_file():
                raise EmbedderError(
                    f"{path / needed}: missing; {path} is not a model2vec directory "
                    "(`rag index distill-static` writes one)"
                )
        tensors = load_file(str(path / MODEL_FILE))
        if "embeddings" not in tensors:
            raise EmbedderError(
                f"{path / MODEL_FILE}: no 'embeddings' tensor (has {sorted(tensors)}); "
                "distil the model again with `rag index distill-static --force`"
            )
        return cls(
            tensors["embeddings"],
            Tokenizer.from_file(str(path / TOKENIZER_FILE)),
            name=name,
            weights=tensors.get("weights"),
            mapping=tensors.get("mapping"),
            max_seq_length=max_seq_length,
            cache_size=cache_size,
        )

    def _pool(self, texts: Sequence[str]) -> np.ndarray:
        from scipy.sparse import csr_matrix

        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        ids = [e.ids for e in encodings]
        if self.unk_id is not None:
            unk = self.unk_id
            ids = [[t for t in row if t != unk] if unk in row else row for row in ids]
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        if not total:
            return np.zeros((len(ids), self.dimension), dtype=np.float32)
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
        # the mean as a sparse (texts x vocabulary) product: 10x a gather + reduceat, which first
        # materialises one float32 row per word piece (measured on 30,000 titles)
        share = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
        if self.weights is not None:
            share *= self.weights[flat]
        columns = flat if self.mapping is None else self.mapping[flat]
        indptr = np.concatenate(([0], np.cumsum(lengths)))
        pick = csr_matrix((share, columns, indptr), shape=(len(ids), self.vectors.shape[0]))
        return np.asarray(pick @ self.vectors, dtype=np.float32)

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        size = max(1, int(batch_size or self.batch_size))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc="embedding", unit="text")
        parts = []
        for start in range(0, len(texts), size):
            chunk = texts[start : start + size]
            parts.append(self._pool(chunk))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return _normalise(np.concatenate(parts) if len(parts) > 1 else parts[0])


def load_static_embedder(config: Any) -> StaticEmbedder:
    """embedding.backend=static: the distilled model of `config` (an EmbeddingConfig), which must exist."""
    path = static_model_dir(config)
    if not path.is_dir():
        hint = (
            "point embedding.static_dir at a model2vec directory"
            if getattr(config, "static_dir", None)
            else "distil it once with `rag index distill-static` (add the same --config/--set options)"
        )
        raise EmbedderError(
            f"embedding.backend: 'static' needs a distilled model at {path}, which does not exist: {hint}, "
            "or set embedding.backend: torch"
        )
    spec = str(config.model).strip()
    name = f"static:{spec}" if not getattr(config, "static_dir", None) else f"static:{path.name}"
    return StaticEmbedder.from_dir(
        path, name=name, max_seq_length=config.max_seq_length, cache_size=config.cache_size
    )


def require_model2vec() -> Any:
    try:
        from model2vec.distill import distill_from_model
    except ImportError as exc:
        raise StaticBackendMissing(
            f"distilling a static model needs model2vec and skeletoken ({exc}): `pip install .[static]` "
            "(or `pip install model2vec 'skeletoken<0.7'`); embedding with an existing one does not"
        ) from None
    return distill_from_model


def distill_static(config: Any, *, force: bool = False) -> Path:
    """Distil `config.model` (a local directory) into `static_model_dir(config)`, once. Returns the directory."""
    out_dir = static_model_dir(config)
    if out_dir.is_dir() and not force:
        log.info("static model already at %s", out_dir)
        return out_dir
    source = _source_dir(config)
    distill_from_model = require_model2vec()
    import model2vec
    import torch
    from transformers import AutoModel, AutoTokenizer

    pca = int(getattr(config, "static_pca_dims", 256) or 0)
    trust = bool(getattr(config, "trust_remote_code", False))
    started = time.perf_counter()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    model = AutoModel.from_pretrained(str(source), local_files_only=True, trust_remote_code=trust)
    tokenizer = AutoTokenizer.from_pretrained(
        str(source), local_files_only=True, use_fast=True, trust_remote_code=trust
    )
    if pca and pca > int(getattr(model.config, "hidden_size", pca)):
        raise EmbedderError(
            f"embedding.static_pca_dims: {pca} is more than the model's {model.config.hidden_size} dimensions; "
            "use a smaller number, or 0 to keep them all"
        )
    device = "cuda" if str(config.device) in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    static = distill_from_model(
        model=model, tokenizer=tokenizer, device=device, pca_dims=pca or None, quantize_to="float16"
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        static.save_pretrained(work)
        meta = {
            "source": str(source),
            "model": str(config.model),
            "pca_dims": pca,
            "dimension": int(static.dim),
            "vocabulary": len(static.tokens),
            "distill_version": DISTILL_VERSION,
            "model2vec": getattr(model2vec, "__version__", "?"),
            "torch": torch.__version__,
            "distill_s": round(time.perf_counter() - started, 1),
        }
        (work / "distill.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            if not force:  # another process finished the same distillation first: keep theirs
                shutil.rmtree(work, ignore_errors=True)
                return out_dir
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("distilled %s into %s in %.0f s", source, out_dir, time.perf_counter() - started)
    return out_dir
