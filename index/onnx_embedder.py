"""The fast embedding backend: a sentence-transformers model run by ONNX Runtime, optionally int8.

    rag index build --set embedding.backend=onnx                 # int8 (embedding.onnx_quantize: int8)
    python -c "from rag.config import load_config; from index.embedder import load_embedder; \
print(load_embedder(load_config(None, ['embedding.backend=onnx']).embedding).embed(['The Hobbit']).shape)"

`embedding.backend: onnx` loads an `OnnxEmbedder`. On first use the model is exported from its local
weights (no hub access) into a cache directory, once:

1. `torch.onnx.export` of the transformer with the model's pooling (mean or CLS) and L2 normalisation
   inside the graph, so one `session.run` returns the final vectors;
2. ONNX Runtime's transformer optimizer fuses attention, GELU and layer norms (BERT-family models);
3. with `onnx_quantize: int8`, dynamic quantisation: int8 weights per output channel, activations
   quantised at run time. Per-channel matters on AVX2 CPUs without VNNI: per-tensor int8 brought the
   cosine to the fp32 vector down to ~0.96, per-channel keeps it ~0.99 (docs/performance.md);
4. a check that the exported model agrees with torch on probe titles (cosine > 0.999 for fp32, > 0.95
   for int8), else the export is refused.

The cache is `embedding.onnx_cache_dir` or `~/.cache/amazontitles-rag/onnx/<key>`, `key` a hash of the
weights' size and mtime, the settings and the onnxruntime version; a directory is written under a
temporary name and renamed, so a crash never leaves a half export. Only `.onnx` and JSON files.

Texts are tokenised with the model's fast tokenizer (`tokenizers`, Rust), sorted by token count and
batched, each batch padded to its own longest text: titles vary from 3 to 64 word pieces, so this
cuts the padding work several fold compared with batches in input order. A batch holds at most
`BATCH_TOKENS` padded word pieces (and `batch_size` texts): small batches cost less CPU per title.

onnxruntime and onnx are imported inside functions; `pip install .[fast]` installs them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.query_cache import CachedQueryMixin, QueryCache, normalise

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the export recipe changes: old cache entries are then not reused
PROBE_TEXTS = [
    "The Hobbit",
    "City of Djinns: A Year in Delhi",
    "Wooden Rainbow Stacking Tower (12 Pieces) for toddlers, ages 1-3",
    "a",
]
MIN_COSINE = {"none": 0.999, "int8": 0.95}
# padded word pieces per session.run, at most (and at most `batch_size` texts). Small batches cost
# less CPU per title on 2 AVX2 cores (activations stay in cache): process CPU time for 2,000
# synthetic titles 6.1 s at 512 against 7.9-9.1 s for batches of 256 titles; for the 200 titles
# of a 1% update (one batch of 256 padded to its longest title before) 0.8 s against 2.4 s
BATCH_TOKENS = 512


class OnnxBackendMissing(RuntimeError):
    """onnxruntime (or onnx) is not installed; the message says how to install it."""


def require_onnxruntime() -> Any:
    """Import onnxruntime or raise `OnnxBackendMissing` with the install command."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxBackendMissing(
            "embedding.backend: 'onnx' needs onnxruntime and onnx, which are not installed. "
            "Install the fast extra: `pip install .[fast]` (or `pip install onnxruntime onnx`), "
            "or set embedding.backend: torch."
        ) from None
    return onnxruntime


def _read_json(path: Path) -> Any:  # the JSON value (modules.json is a list), {} if unreadable
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def pooling_mode(model_dir: Path) -> tuple[str, bool]:
    """(pooling, normalize) of a sentence-transformers directory: "mean" or "cls", and whether a Normalize module follows."""
    modules = _read_json(model_dir / "modules.json")
    if not modules:  # a plain transformers directory: sentence-transformers would use mean pooling
        return "mean", False
    pooling: str | None = None
    normalize = False
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = _read_json(model_dir / str(module.get("path", "")) / "config.json")
            # sentence-transformers 5 saves `pooling_mode: "mean"`; earlier versions one flag per mode
            mode = cfg.get("pooling_mode")
            if cfg.get("pooling_mode_mean_tokens") or mode == "mean":
                pooling = "mean"
            elif cfg.get("pooling_mode_cls_token") or mode == "cls":
                pooling = "cls"
            else:
                raise ValueError(
                    f"{model_dir / str(module.get('path', '')) / 'config.json'}: only mean or CLS pooling "
                    "is supported by the onnx backend; use embedding.backend: torch"
                )
        elif kind.endswith("Normalize"):
            normalize = True
        elif not kind.endswith("Transformer"):
            raise ValueError(
                f"{model_dir / 'modules.json'}: module {kind!r} is not supported by the onnx backend "
                "(Transformer, Pooling and Normalize are); use embedding.backend: torch"
            )
    return pooling or "mean", normalize


def cache_key(model_dir: Path, quantize: str, opset: int) -> str:
    """Hash of what the export depends on: the weights (size + mtime), settings and library versions."""
    import onnxruntime

    parts = [str(model_dir.resolve()), quantize, str(opset), str(EXPORT_VERSION), onnxruntime.__version__]
    for name in sorted(os.listdir(model_dir)):
        path = model_dir / name
        if path.is_file() and name.endswith((".safetensors", ".bin", ".json")):
            stat = path.stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "amazontitles-rag" / "onnx"


def _torch_reference(
    model_dir: Path, texts: Sequence[str], max_seq_length: int, trust_remote_code: bool
) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(model_dir), device="cpu", trust_remote_code=trust_remote_code, local_files_only=True
    )
    model.max_seq_length = max_seq_length
    return np.asarray(
        model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32
    )


def _pooled(model: Any, pooling: str) -> Any:
    """transformer -> pooling -> L2 normalisation, the whole sentence-transformers pipeline in one module."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            # always normalise: the index needs unit vectors whatever the model's own modules say
            return torch.nn.functional.normalize(vectors, p=2, dim=1)

    return Pooled(model)


def _trace(module: Any, raw: Path, opset: int) -> None:
    """Trace `module` to the ONNX file `raw`, with dynamic batch and token axes."""
    import warnings

    import torch

    sample_ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    sample_mask = (sample_ids != 0).long()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(
            module,
            (sample_ids, sample_mask),
            str(raw),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed
        )


def _fuse(raw: Path, fused: Path, config: Any) -> dict[str, int]:
    """ONNX Runtime's transformer fusions for BERT-like models (else a copy); returns the fused op counts."""
    if getattr(config, "model_type", "") not in ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet"):
        shutil.copyfile(raw, fused)  # other architectures: ONNX Runtime's generic graph optimisations only
        return {}
    from onnxruntime.transformers.optimizer import optimize_model

    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_heads", 0))
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0))
    model_type = "bert" if config.model_type in ("roberta", "xlm-roberta", "mpnet") else config.model_type
    optimized = optimize_model(str(raw), model_type=model_type, num_heads=heads, hidden_size=hidden)
    optimized.save_model_to_file(str(fused))
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def _quantize(fused: Path, final: Path, quantize: str) -> None:
    if quantize != "int8":
        os.replace(fused, final)
        return
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fused),
        str(final),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # the fused ops (Attention, SkipLayerNormalization) have no shape inference: say they are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _probe_cosine(
    final: Path, model_dir: Path, quantize: str, max_seq_length: int, trust_remote_code: bool
) -> float:
    """The smallest cosine between the export's and torch's vectors of PROBE_TEXTS; refused below MIN_COSINE."""
    # the export must reproduce torch, or it is refused (a silently wrong index is worse than a slow one)
    session = OnnxEmbedder.open_session(final, num_threads=None)
    probe = OnnxEmbedder(session, _tokenizer(model_dir, max_seq_length), name="probe", dimension=0).embed(
        PROBE_TEXTS
    )
    reference = _torch_reference(model_dir, PROBE_TEXTS, max_seq_length, trust_remote_code)
    cosines = (probe * reference).sum(axis=1)
    if float(cosines.min()) < MIN_COSINE[quantize]:
        raise RuntimeError(
            f"{model_dir}: the ONNX export ({quantize}) disagrees with torch "
            f"(cosine {cosines.min():.4f} < {MIN_COSINE[quantize]}); use embedding.backend: torch"
        )
    del session
    return float(cosines.min())


def export_model(
    model_dir: Path,
    out_dir: Path,
    *,
    quantize: str = "int8",
    max_seq_length: int = 64,
    trust_remote_code: bool = False,
    opset: int = 17,
) -> Path:
    """Export `model_dir` to `out_dir/model.onnx` (+ `export.json`); returns the model file. Atomic.

    Steps: trace the pooled, normalised model (`_trace`), fuse (`_fuse`), quantise (`_quantize`), check
    against torch (`_probe_cosine`), then move the finished folder into place."""
    import torch
    from transformers import AutoConfig, AutoModel

    require_onnxruntime()
    try:
        import onnx  # noqa: F401 - needed by the steps below; checked here for a clear message
    except ImportError:
        raise OnnxBackendMissing("exporting to ONNX needs the onnx package: `pip install .[fast]`") from None

    started = time.perf_counter()
    pooling, normalize = pooling_mode(model_dir)
    config = AutoConfig.from_pretrained(
        str(model_dir), trust_remote_code=trust_remote_code, local_files_only=True
    )
    # eager attention traces into plain ops that ONNX Runtime's optimizer recognises and fuses
    model = AutoModel.from_pretrained(
        str(model_dir),
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        attn_implementation="eager",
        dtype="float32",  # weights saved in fp16 (to travel) are exported, fused and quantised from fp32
    ).eval()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        raw, fused, final = work / "raw.onnx", work / "fused.onnx", work / "model.onnx"
        _trace(_pooled(model, pooling), raw, opset)
        fusion_stats = _fuse(raw, fused, config)
        _quantize(fused, final, quantize)
        for leftover in (raw, fused):
            leftover.unlink(missing_ok=True)
        min_cosine = _probe_cosine(final, model_dir, quantize, max_seq_length, trust_remote_code)
        import onnxruntime

        meta = {
            "source": str(model_dir),
            "quantize": quantize,
            "opset": opset,
            "export_version": EXPORT_VERSION,
            "pooling": pooling,
            "model_normalizes": normalize,
            "max_seq_length_probe": max_seq_length,
            "fused_operators": fusion_stats,
            "probe_min_cosine": round(min_cosine, 6),
            "export_s": round(time.perf_counter() - started, 2),
            "file_bytes": final.stat().st_size,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        }
        (work / "export.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():  # another process finished the same export first: keep theirs
            shutil.rmtree(work, ignore_errors=True)
        else:
            os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("exported %s to %s (%s) in %.1f s", model_dir, out_dir, quantize, time.perf_counter() - started)
    return out_dir / "model.onnx"


def _tokenizer(model_dir: Path, max_seq_length: int) -> Any:
    """The model's fast tokenizer, truncating to max_seq_length and padding each batch to its longest text."""
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:  # only vocab files: let transformers build the fast tokenizer
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True).backend_tokenizer
    # tokenizer.json files often carry fixed-length padding (all-MiniLM-L6-v2's pads to 128):
    # that would make every title cost as much as a 128-token one
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=int(max_seq_length))
    return tokenizer


def token_batches(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[slice]:
    """Consecutive slices of `lengths` (ascending) whose padded size len * longest <= max_tokens.

    Every slice holds at least one text and at most `max_texts`."""
    batches: list[slice] = []
    start = 0
    for i, n in enumerate(lengths):
        if i > start and (i - start >= max_texts or (i - start + 1) * n > max_tokens):
            batches.append(slice(start, i))
            start = i
    if start < len(lengths):
        batches.append(slice(start, len(lengths)))
    return batches


class OnnxEmbedder(CachedQueryMixin):
    """Embedder over an ONNX Runtime session whose graph ends in pooled, L2-normalised vectors."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        *,
        name: str,
        dimension: int,
        batch_size: int = 256,
        cache_size: int = 1024,
        bulk_session: Callable[[], Any] | None = None,
    ) -> None:
        """`session` embeds everything, or, with `bulk_session` (a factory, called on first use),
        single texts only: `bulk_session()` then embeds every call of more than one text."""
        self.session = session
        self._bulk_factory = bulk_session
        self._bulk: Any = None
        self._bulk_lock = threading.Lock()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = int(batch_size)
        self.batch_tokens = BATCH_TOKENS
        self._cache = QueryCache(cache_size)
        self._inputs = {i.name for i in session.get_inputs()}
        self.dimension = int(dimension) or int(self._run([tokenizer.encode("x")]).shape[1])

    @staticmethod
    def open_session(path: Path, num_threads: int | None) -> Any:
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        # no busy-waiting between ops: on a shared 2-core machine spinning threads steal the CPU
        # that FAISS, the lexical index and the server need (measured: no loss in query latency)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def bulk_session(self) -> Any:
        """The session for calls of more than one text (`session` itself without a bulk factory)."""
        if self._bulk_factory is None:
            return self.session
        with self._bulk_lock:
            if self._bulk is None:
                self._bulk = self._bulk_factory()
            return self._bulk

    def _run(self, encodings: Sequence[Any], session: Any = None) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        session = session or self.session
        return session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        size = int(batch_size or self.batch_size)
        session = self.session if len(texts) == 1 else self.bulk_session()
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        # tokenise in slices so memory stays bounded for a 1.3M-title build
        for start in range(0, len(texts), 50_000):
            chunk = list(texts[start : start + 50_000])
            encodings = self.tokenizer.encode_batch(chunk)
            order = np.argsort(
                [len(e.ids) for e in encodings], kind="stable"
            )  # similar lengths share a batch
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(chunk), desc="embedding", unit="text")
            for rows in token_batches([len(encodings[i].ids) for i in order], size, self.batch_tokens):
                picked = order[rows]
                out[start + picked] = self._run([encodings[i] for i in picked], session)
                if bar is not None:
                    bar.update(len(picked))
            if bar is not None:
                bar.close()
        return normalise(out)  # the graph normalises; again in float32 for the empty-text zero vector


def load_onnx_embedder(model_dir: Path, name: str, config: Any) -> OnnxEmbedder:
    """An `OnnxEmbedder` for the local model directory `model_dir`, exporting it on first use."""
    require_onnxruntime()
    quantize = str(getattr(config, "onnx_quantize", "int8"))
    max_seq_length = int(config.max_seq_length or 256)
    root = (
        Path(config.onnx_cache_dir).expanduser()
        if getattr(config, "onnx_cache_dir", None)
        else default_cache_root()
    )
    out_dir = root / f"{model_dir.name or 'model'}-{quantize}-{cache_key(model_dir, quantize, 17)}"
    model_file = out_dir / "model.onnx"
    if not model_file.is_file():
        log.warning(
            "embedding.backend=onnx: exporting %s (%s) to %s, once (~10-30 s)", model_dir, quantize, out_dir
        )
        export_model(
            model_dir,
            out_dir,
            quantize=quantize,
            max_seq_length=max_seq_length,
            trust_remote_code=bool(config.trust_remote_code),
        )
    threads = getattr(config, "num_threads", None)
    bulk = None
    if not threads:
        # embedding.num_threads null: a single text (a question) runs on one thread, the bulk of a
        # build or update on all cores. One question is too small to gain from a second thread (3.0 ms
        # on one, 2.8-3.1 on two, 2 cores), and the one-thread session leaves the other core to the
        # description search that retrieval runs meanwhile (retrieval.parallel_paths): both paths
        # 4.1-4.4 ms p50 instead of 5.3-5.5 at 1.3M rows. Same vectors bit for bit.
        bulk = functools.partial(OnnxEmbedder.open_session, model_file, None)
        threads = 1
    session = OnnxEmbedder.open_session(model_file, threads)
    return OnnxEmbedder(
        session,
        _tokenizer(model_dir, max_seq_length),
        name=name,
        dimension=0,
        batch_size=config.batch_size,
        cache_size=config.cache_size,
        bulk_session=bulk,
    )
