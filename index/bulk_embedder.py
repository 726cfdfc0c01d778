"""Bulk embedding for builds and updates: Rust tokenizer in bulk, length-sorted fp16 batches, SDPA.

    python -c "from rag.config import load_config; from index.embedder import load_embedder; \
e = load_embedder(load_config(overrides=['embedding.bulk=true']).embedding); print(type(e).__name__)"

`SentenceTransformer.encode` tokenises each batch in Python and pads it to its longest title;
on a GPU that host work, not the model, sets the pace (7,651 titles/s on an H200, where the
model alone runs at 265,000+). `BulkEmbedder` takes the same sentence-transformers model apart
and runs its pieces directly:

1. the model's Rust tokenizer (`tokenizers.Tokenizer.encode_batch_fast`, no offsets) tokenises a
   whole chunk of titles at once, truncated to `max_seq_length` word pieces (special tokens
   included, as sentence-transformers truncates), in `tokenizer_threads` Rayon threads;
2. the chunk is sorted by token count and cut into batches of at most 4,096 titles and at most
   `batch_tokens` padded tokens (a bound for models with long inputs), 128 titles on a CPU, so
   padding stays small;
3. each batch runs through the transformer (fp16 on CUDA, fp32 on CPU), with the attention kernel
   `embedding.bulk_attention`: "eager" by default, which measured fastest for these short, padded
   rows on the H200 (292,000 vs 219,000 titles/s for "sdpa", fp16, 4,096 rows; docs/performance-gpu.md),
   then mean pooling over the attention mask and L2 normalisation, exactly as the model's
   Pooling(mean) + Normalize modules do;
4. the vectors are scattered back to input order (float32).

A producer thread tokenises chunk k+1 while the GPU runs chunk k. With `tokenizer_processes` > 0
(`embedding.tokenizer_processes`; by default on CUDA half the cores less two, at most 6) the chunks
are tokenised and padded instead by that many worker processes with one Rayon thread each, several
chunks at a time, and the thread that feeds the GPU only copies finished batches: on the H200's host
the Rust tokenizer (~30,000 titles/s per core) was what held the bulk path to 49,497 titles/s in a
2.25M-row build, and whole processes scale with the cores where Rayon's threads within one chunk did
not. Only models made of
Transformer + Pooling(mean) [+ Normalize] qualify (`bulk_supported`); `index.embedder.load_embedder`
uses this path for `embedding.bulk: auto` on CUDA (and for `true` on any device), otherwise the
plain `SentenceTransformerEmbedder`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np

from .query_cache import CachedQueryMixin
from .query_cache import QueryCache as _QueryCache
from .query_cache import normalise as _normalise

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 4096 * 64  # padded word pieces per forward pass: 4,096 titles of up to 64 pieces
MAX_BATCH_ROWS = 4096  # larger batches were slower on the H200 (docs/performance-gpu.md)
CPU_BATCH_ROWS = 128
CHUNK_ROWS = 32768  # titles tokenised per producer step: large enough for Rayon, small enough to overlap


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_tokenizer_processes(device: str) -> int:
    """Tokenizer processes of the bulk path: on CUDA half the cores less two (at most 6), else none.

    The other half of the cores stays for the build's cleaning processes; two more for its reading
    loop and SQLite thread. On a CPU the cores are the model's, so tokenising stays a thread.
    """
    if not str(device).startswith("cuda"):
        return 0
    return max(0, min(6, _cores() // 2 - 2))


def default_tokenizer_threads() -> int:
    """Rayon threads for the tokenizer: half the cores (at least 1, at most 8).

    The other half stays free for the build's own work (the cleaning processes, SQLite, the main
    thread feeding the GPU); all cores for the tokenizer alone oversubscribed the machine
    (44,000 titles/s with 16 threads next to the rest of the build).
    """
    return max(1, min(8, _cores() // 2))


def set_tokenizer_threads(threads: int | None) -> int:
    """Ask the Rust tokenizer for `threads` Rayon threads; returns the number in effect (best effort).

    Rayon reads RAYON_NUM_THREADS once, when its pool starts (the first parallel encode in the
    process), so this only works before that; an explicit RAYON_NUM_THREADS in the environment wins.
    """
    if "RAYON_NUM_THREADS" not in os.environ:
        os.environ["RAYON_NUM_THREADS"] = str(int(threads or default_tokenizer_threads()))
    # a parent that set TOKENIZERS_PARALLELISM=false would make encode_batch serial
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    return int(os.environ["RAYON_NUM_THREADS"])


def bulk_supported(model: Any) -> str | None:
    """None when `model` (a SentenceTransformer) is Transformer + Pooling(mean) [+ Normalize]; else why not."""
    try:
        modules = list(model)
    except TypeError:
        return "not a sequence of sentence-transformers modules"
    names = [type(m).__name__ for m in modules]
    if len(modules) not in (2, 3) or names[0] != "Transformer" or names[1] != "Pooling":
        return f"modules {names} are not Transformer + Pooling [+ Normalize]"
    if len(modules) == 3 and names[2] != "Normalize":
        return f"the third module is {names[2]}, not Normalize"
    if getattr(modules[1], "pooling_mode", None) not in ("mean", None) or (
        getattr(modules[1], "pooling_mode", None) is None
        and not getattr(modules[1], "pooling_mode_mean_tokens", False)
    ):
        return f"pooling is {getattr(modules[1], 'pooling_mode', '?')!r}, not mean"
    tokenizer = getattr(model, "tokenizer", None)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return "the tokenizer has no Rust (fast) backend"
    if getattr(modules[0], "auto_model", None) is None:
        return "the Transformer module has no auto_model"
    return None


def tokenize_with(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids of all texts concatenated, start offset of each text, token count of each text)."""
    encodings = tokenizer.encode_batch_fast(list(texts), add_special_tokens=True)
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    starts = np.zeros(len(ids), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return flat, starts, lengths


def pad_batches(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, max_rows: int, batch_tokens: int, pad_id: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Length-sorted padded batches: (positions in the input, ids [b, L], lengths [b]) each."""
    order = np.argsort(-lengths, kind="stable")  # longest first: each batch's first row sets L
    out = []
    i, n = 0, len(order)
    while i < n:
        longest = max(int(lengths[order[i]]), 1)
        size = max(1, min(max_rows, batch_tokens // longest))
        rows = order[i : i + size]
        lens = lengths[rows]
        width = max(int(lens.max()), 1)
        cols = np.arange(width, dtype=np.int64)
        mask = cols[None, :] < lens[:, None]
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        ids[mask] = flat[(starts[rows][:, None] + cols[None, :])[mask]]
        out.append((rows, ids, lens))
        i += size
    return out


_WORKER: dict[str, Any] = {}


def _init_tokenizer_worker(spec: str, max_length: int) -> None:
    """In a tokenizer process: one Rayon thread (the processes are the parallelism), the model's tokenizer."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(spec)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    _WORKER["tokenizer"] = tokenizer


def _worker_batches(
    texts: list[str], max_rows: int, batch_tokens: int, pad_id: int
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], float]:
    """In a tokenizer process: `pad_batches` of `texts`, and the seconds it took."""
    t0 = time.perf_counter()
    flat, starts, lengths = tokenize_with(_WORKER["tokenizer"], texts)
    return pad_batches(flat, starts, lengths, max_rows, batch_tokens, pad_id), time.perf_counter() - t0


class BulkEmbedder(CachedQueryMixin):
    """A sentence-transformers model (Transformer + mean Pooling + Normalize) run in bulk; see the module doc."""

    def __init__(
        self,
        model: Any,
        name: str,
        *,
        device: str,
        max_seq_length: int | None = None,
        half: bool | None = None,
        attention: str = "eager",
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        tokenizer_threads: int | None = None,
        tokenizer_processes: int | None = None,
        chunk_rows: int = CHUNK_ROWS,
        cache_size: int = 1024,
    ) -> None:
        import torch
        from tokenizers import Tokenizer

        why = bulk_supported(model)
        if why:
            raise ValueError(f"embedding.bulk: the model {name!r} cannot run in bulk: {why}")
        self.name = name
        self.device = torch.device(device)
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        self.dtype = torch.float16 if self.half else torch.float32
        self.threads = set_tokenizer_threads(tokenizer_threads)
        self.processes = (
            default_tokenizer_processes(device)
            if tokenizer_processes is None
            else max(0, int(tokenizer_processes))
        )
        self._pool: Any = None
        # seconds: tokenising + padding (summed over the tokenizer processes or the thread), and the
        # GPU feeder's waits for a tokenised chunk (what tokenising costs the embedding stage's wall time)
        self.tokenize_s = self.tokenize_wait_s = 0.0
        self.max_seq_length = int(max_seq_length or getattr(model, "max_seq_length", None) or 128)
        self.batch_tokens = max(int(batch_tokens), self.max_seq_length)
        self.chunk_rows = max(1, int(chunk_rows))
        # the GPU wants big batches; a CPU is faster with small ones (less padding, cache-sized)
        self.max_rows = MAX_BATCH_ROWS if self.device.type == "cuda" else CPU_BATCH_ROWS
        self._cache = _QueryCache(cache_size)
        self.encoder = model[0].auto_model
        try:
            self.encoder.set_attn_implementation(attention)
        except Exception:
            log.warning(
                "embedding.bulk_attention=%s: cannot switch the model's attention", attention, exc_info=True
            )
        self.attention = getattr(self.encoder.config, "_attn_implementation", attention)
        self.encoder = self.encoder.to(device=self.device, dtype=self.dtype).eval()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension = int(getter())
        # a private copy: no padding (batches are padded here), truncation to the model's length
        self.tokenizer = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_seq_length)
        pad = model.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.normalize = len(list(model)) == 3
        self._torch = torch

    # ------------------------------------------------------------------ host side

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token ids of all texts concatenated, start offset of each text, token count of each text)."""
        return tokenize_with(self.tokenizer, texts)

    def batches(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Length-sorted padded batches of `texts`: (positions in `texts`, ids [b, L], lengths [b])."""
        t0 = time.perf_counter()
        flat, starts, lengths = self.tokenize(texts)
        out = pad_batches(flat, starts, lengths, self.max_rows, self.batch_tokens, self.pad_id)
        self.tokenize_s += time.perf_counter() - t0
        return out

    def _tokenizer_pool(self) -> Any:
        """The tokenizer processes (started on first use, from a fresh interpreter: never a fork of a CUDA process)."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context(method),
                initializer=_init_tokenizer_worker,
                initargs=(self.tokenizer.to_str(), self.max_seq_length),
            )
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the tokenizer processes, if any (they are started again when needed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------ device side

    def _forward(self, ids: np.ndarray, lens: np.ndarray) -> Any:
        """Mean-pooled (and normalised) vectors of one batch, on the device, float32."""
        torch = self._torch
        pin = self.device.type == "cuda"
        ids_t = torch.from_numpy(ids)
        lens_t = torch.from_numpy(lens)
        if pin:
            ids_t, lens_t = ids_t.pin_memory(), lens_t.pin_memory()
        ids_t = ids_t.to(self.device, non_blocking=True)
        lens_t = lens_t.to(self.device, non_blocking=True)
        mask = torch.arange(ids.shape[1], device=self.device)[None, :] < lens_t[:, None]
        tokens = self.encoder(input_ids=ids_t, attention_mask=mask.long()).last_hidden_state
        weights = mask.to(tokens.dtype).unsqueeze(1)  # [b, 1, L]
        summed = torch.bmm(weights, tokens).squeeze(1).float()  # fp32 accumulation in cuBLAS
        counts = lens_t.to(torch.float32).clamp(min=1e-9).unsqueeze(1)
        pooled = summed / counts
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def _produce(self, texts: Sequence[str], spans: list[tuple[int, int]], out: queue.Queue) -> None:
        try:
            for start, end in spans:
                out.put((start, self.batches(texts[start:end])))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            out.put(exc)
            return
        out.put(None)

    def _pooled_chunks(
        self, texts: Sequence[str], spans: list[tuple[int, int]]
    ) -> Iterator[tuple[int, list]]:
        """The chunks' batches from the tokenizer processes, in order, with two chunks per process in flight."""
        from collections import deque
        from concurrent.futures.process import BrokenProcessPool

        pool = self._tokenizer_pool()
        args = (self.max_rows, self.batch_tokens, self.pad_id)
        pending: deque = deque()
        todo = iter(spans)

        def submit() -> None:
            span = next(todo, None)
            if span is not None:
                pending.append((span[0], pool.submit(_worker_batches, list(texts[span[0] : span[1]]), *args)))

        for _ in range(2 * self.processes):
            submit()
        try:
            while pending:
                start, future = pending.popleft()
                submit()
                t0 = time.perf_counter()
                try:
                    batches, seconds = future.result()
                except BrokenProcessPool as exc:
                    self._pool = None
                    raise RuntimeError(
                        "embedding: a bulk tokenizer process died (out of memory?); "
                        "set embedding.tokenizer_processes: 0 to tokenise in a thread"
                    ) from exc
                self.tokenize_wait_s += time.perf_counter() - t0
                self.tokenize_s += seconds
                yield start, batches
        finally:
            for _start, future in pending:
                future.cancel()

    def _chunks(self, texts: Sequence[str]) -> Iterator[tuple[int, list]]:
        spans = [(s, min(s + self.chunk_rows, len(texts))) for s in range(0, len(texts), self.chunk_rows)]
        if self.processes > 0 and len(spans) > 1:
            yield from self._pooled_chunks(texts, spans)
            return
        if len(spans) == 1:  # nothing to overlap with: no thread
            yield 0, self.batches(texts)
            return
        handoff: queue.Queue = queue.Queue(maxsize=2)
        producer = threading.Thread(
            target=self._produce, args=(texts, spans, handoff), name="bulk-tokenizer", daemon=True
        )
        producer.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = handoff.get()
                self.tokenize_wait_s += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            while producer.is_alive():  # a consumer that stops early must not leave it blocked on put
                with contextlib.suppress(queue.Empty):
                    handoff.get(timeout=0.05)
            producer.join()

    def embed(
        self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """L2-normalised float32 vectors of `texts`, in input order (`batch_size` is not used: batches are by tokens)."""
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        torch = self._torch
        vectors = np.empty((n, self.dimension), dtype=np.float32)
        with torch.inference_mode():
            for start, batches in self._chunks(texts):
                count = sum(len(b[0]) for b in batches)
                result = torch.empty((count, self.dimension), dtype=torch.float32, device=self.device)
                positions = []
                done = 0
                for rows, ids, lens in batches:
                    result[done : done + len(rows)] = self._forward(ids, lens)
                    positions.append(rows)
                    done += len(rows)
                order = np.concatenate(positions) + start
                vectors[order] = result.cpu().numpy()  # one device->host copy per chunk
        return _normalise(vectors)
