"""Full build and incremental update of the versioned index.

    rag index build --data ../shared/data/amazontitles/trn_sample.jsonl
    rag index update --data new.jsonl --delete gone_uids.txt

    rag index compact

Build: catalog rows (rag.catalog.CatalogReader: cleaned, validated, de-duplicated) are streamed in
chunks; each chunk goes into SQLite, its titles are embedded in batches and added to FAISS under
ids derived from the uid; the result is a version with only a *base* segment.

Update (segments, docs/index.md): the parent's base files (vectors.faiss, meta.sqlite, the lexical
base) are hard-linked into the new version, never copied or modified; the parent's small *delta*
(delta.sqlite, delta.faiss, tombstones.npy) is copied and changed: rows are upserted/deleted by
uid, only rows whose *title* changed are embedded again (a row whose content_hash is unchanged is
not touched at all; a changed description alone only rewrites metadata, because only titles are
embedded), and base ids deleted or re-embedded become tombstones. When the delta passes
`index.compact_ratio` of the base (or on `rag index compact`), the update writes a fresh base
instead (compaction). Both write a new version directory and switch `current` atomically
(index/store.py); one writer at a time.

Extension hook: when `config.index.descriptions` is true and `index.lexical` is importable,
`index.lexical.build_artifacts(meta_db_path, version_dir, config) -> list[str]` is called after
the metadata is final; the file names it returns are checksummed into the manifest as artifacts.
On update, `index.lexical.update_artifacts(meta_db_path, version_dir, parent_dir, changed_uids,
deleted_uids, config)` is preferred when it exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import queue
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.types import CatalogRow

from .metadata import DELTA_META_FILE, META_FILE, MetadataReader, content_hash, open_for_writing
from .store import (
    DELTA_VECTORS_FILE,
    STAGED_PREFIX,
    TOMBSTONES_FILE,
    VECTORS_FILE,
    HashCache,
    IndexStore,
    IndexStoreError,
    load_tombstones,
    read_manifest,
    segment_counts,
    utc_now,
)
from .vector import FaissIndex, uid_to_id

if TYPE_CHECKING:
    from rag.config import Config
    from rag.types import Embedder

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"
UPDATE_REJECTS_FILE = "update_rejects.jsonl"
CHUNK_ROWS = 8192  # rows per SQLite insert + embedding call: bounded memory, steady progress
BULK_CHUNKS_PER_CALL = 8  # bulk embedder: chunks of `chunk_rows` titles per embed call (32768 * 8)
# the interpreter's thread switch interval while a bulk (CUDA) build runs, in seconds (Python's default
# is 0.005): the GPU-feeding thread takes the lock back after every torch call, and with the reading
# loop and the SQLite thread busy in Python each take could wait up to the whole interval
BULK_SWITCH_INTERVAL_S = 0.0002
# SQLite page cache of a build, at most 1 GiB (filled only as the file grows): random inserts stay in memory
BUILD_SQLITE_CACHE_KIB = 1 << 20


class BuildError(IndexStoreError):
    """The build or update cannot proceed; the message says why and what to do."""


class DiskFullError(BuildError):
    """No space left while writing a version; it was removed and nothing was written."""


# --------------------------------------------------------------------------- reports


@dataclass
class BuildReport:
    version: str
    rows: int
    seconds: float
    read_summary: Any = None  # rag.catalog.ReadSummary
    embed_seconds: float = 0.0
    index_type: str = "flat"
    path: str = ""
    embedding_model: str = ""
    removed_versions: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGE_NAMES)

    @property
    def titles_per_s(self) -> float:
        return self.rows / self.embed_seconds if self.embed_seconds > 0 else float("nan")

    def stages_line(self) -> str:
        """`reading+cleaning 3.1s, SQLite 0.8s, ...` in pipeline order (the first three overlap embedding)."""
        parts = [
            f"{label} {self.stages[key]:.1f}s" for key, label in STAGE_NAMES.items() if key in self.stages
        ]
        return ", ".join(parts)

    def summary(self) -> str:
        lines = [
            (
                f"built index version {self.version}: {self.rows:,} rows, {self.index_type} index, model "
                f"{self.embedding_model}, in {self.seconds:.1f}s (embedding {self.embed_seconds:.1f}s, "
                f"{self.titles_per_s:,.0f} titles/s)"
            ),
            f"  at {self.path}",
        ]
        if self.stages:
            lines.append("  stages: " + self.stages_line())
        if self.read_summary is not None:
            lines.append("  catalog: " + self.read_summary.summary())
        if self.removed_versions:
            lines.append(f"  removed old versions: {', '.join(self.removed_versions)}")
        return "\n".join(lines)


# build stages, in pipeline order: reading+cleaning, SQLite and embedding (+ FAISS add) run side by side
STAGE_NAMES = {
    "model_load_s": "model load",
    "read_clean_s": "reading+cleaning",
    "read_wait_s": "of which waiting on SQLite",
    "sqlite_s": "SQLite",
    "sqlite_wait_s": "SQLite waiting on embedding",
    "embed_s": "embedding",
    "faiss_add_s": "FAISS add",
    "pipeline_drain_s": "after reading",
    "tokenize_s": "tokenising (in its processes/thread)",
    "tokenize_wait_s": "embedding waiting on tokens",
    "index_choose_s": "index choice (auto)",
    "faiss_save_s": "FAISS save",
    "lexical_s": "BM25",
    "index_and_bm25_s": "index choice + save + BM25 side by side",
    "manifest_s": "manifest",
}


@dataclass
class UpdateReport:
    version: str
    parent: str
    rows: int
    seconds: float
    inserted: int = 0
    updated: int = 0  # title changed: re-embedded
    metadata_only: int = 0  # same title, new content: metadata rewritten, vector kept
    unchanged: int = 0  # same content_hash: nothing done
    deleted: int = 0
    delete_missing: int = 0  # uids in the delete list that were not in the index
    embedded: int = 0
    embed_seconds: float = 0.0
    read_summary: Any = None
    path: str = ""
    removed_versions: list[str] = field(default_factory=list)
    compacted: bool = False  # a fresh base was written (no delta)
    delta_rows: int = 0
    tombstones: int = 0
    timings: dict[str, float] = field(
        default_factory=dict
    )  # seconds per step (parent check, embed, store, commit ...)
    changed: bool = (
        True  # False: nothing to insert, change or delete; no version was written (version == parent)
    )

    @property
    def store_seconds(self) -> float:
        """Everything but embedding: reading, lookups, delta/base writing, lexical, hashing, commit."""
        return self.seconds - self.embed_seconds

    def summary(self) -> str:
        if not self.changed:
            lines = [
                f"nothing to change: index {self.parent} stays current ({self.rows:,} rows), no version written; "
                f"{self.unchanged:,} rows unchanged, none new, changed or deleted"
                + (
                    f" ({self.delete_missing:,} uids to delete were not in the index)"
                    if self.delete_missing
                    else ""
                ),
            ]
            if self.read_summary is not None:
                lines.append("  catalog: " + self.read_summary.summary())
            return "\n".join(lines)
        segs = (
            "compacted: fresh base, no delta"
            if self.compacted
            else f"delta {self.delta_rows:,} rows, {self.tombstones:,} tombstones"
        )
        lines = [
            (
                f"updated index {self.parent} -> {self.version}: {self.rows:,} rows in {self.seconds:.1f}s "
                f"(embedding {self.embed_seconds:.1f}s, store {self.store_seconds:.1f}s; {segs})"
            ),
            f"  inserted {self.inserted:,}, re-embedded {self.updated:,}, metadata only {self.metadata_only:,}, "
            f"unchanged {self.unchanged:,}, deleted {self.deleted:,}"
            + (
                f" ({self.delete_missing:,} uids to delete were not in the index)"
                if self.delete_missing
                else ""
            ),
            f"  embedded {self.embedded:,} titles in {self.embed_seconds:.1f}s",
        ]
        if self.read_summary is not None:
            lines.append("  catalog: " + self.read_summary.summary())
        if self.removed_versions:
            lines.append(f"  removed old versions: {', '.join(self.removed_versions)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _current_parent(store: IndexStore, action: str) -> tuple[str, Path, dict[str, Any]]:
    """Under the writer lock: clear leftovers of crashed writers, then the current version to build on.

    A current version that is damaged (no manifest, no directory) is refused, never removed.
    """
    store.cleanup_leftovers()
    parent = store.current_version()
    if not parent:
        raise BuildError(
            f"{store.current_file}: no index to {action}; run `rag index build --data PATH` first"
        )
    parent_dir = store.version_dir(parent)
    try:
        if not parent_dir.is_dir():
            raise IndexStoreError(f"{parent_dir}: version directory not found")
        return parent, parent_dir, read_manifest(parent_dir)
    except IndexStoreError as exc:
        raise BuildError(
            f"the current version {parent} is damaged, not running {action} on it (nothing was changed or "
            f"deleted): {exc}"
        ) from None


class _Rejects:
    """The rejects file of one build/update: written outside the version dir while the writer runs.

    The reader writes `<root>/rejects/.writing-<id>.jsonl`. On commit the file moves into the new
    version (`name`, listed in its manifest); when no version is written (an error, too many
    rejects, nothing to change) it is kept as `<root>/rejects/<id>.jsonl`, which messages name,
    or removed when empty. A writer killed meanwhile leaves only the `.writing-` file, which the
    next writer's `cleanup_leftovers` removes. `catalog.rejects_path`, when set, wins (untouched).
    """

    def __init__(self, store: IndexStore, version_dir: Path, name: str) -> None:
        store.rejects_dir.mkdir(parents=True, exist_ok=True)
        self.staged = store.rejects_dir / f"{STAGED_PREFIX}{version_dir.name}.jsonl"
        self.kept = store.rejects_dir / f"{version_dir.name}.jsonl"
        self.final = version_dir / name

    def reader(self, config: Config) -> Any:
        from rag.catalog import CatalogReader

        return CatalogReader(config.catalog, self.staged)

    def commit(self, summary: Any) -> list[str]:
        """Move the staged file into the version; returns the file names to list in the manifest."""
        if not self.staged.exists():
            return []
        os.replace(self.staged, self.final)
        if summary is not None:
            summary.rejects_path = str(self.final)
        return [self.final.name]

    def keep(self, summary: Any = None) -> Path | None:
        """No version is written: keep a non-empty rejects file where the summary (and messages) say it is."""
        if self.staged.exists():
            if self.staged.stat().st_size:
                os.replace(self.staged, self.kept)
            else:
                self.staged.unlink()
        where = getattr(summary, "rejects_path", None)
        if where == str(self.staged):
            where = str(self.kept) if self.kept.exists() else None
            summary.rejects_path = where
        return Path(where) if where and Path(where).exists() and Path(where).stat().st_size else None


def _check_rejects(
    config: Config, summary: Any, paths: Sequence[Path], rejects: _Rejects, *, require_rows: bool
) -> None:
    """Refuse input whose refused lines exceed `catalog.max_reject_fraction` of the lines read.

    `require_rows` (a build): also refuse input without a single usable row. An update of a file
    without records is not an error: it has nothing to change (`UpdateReport.changed`).
    """
    limit = float(config.catalog.max_reject_fraction)
    refused = summary.rejected + getattr(summary, "trailing", 0)
    share = refused / summary.read if summary.read else 0.0
    accepted = summary.accepted
    if share <= limit and (accepted or not require_rows):
        return
    kept = rejects.keep(summary)
    where = (
        f"the refused lines and why are in {kept}"
        if kept is not None
        else "no line was refused: the input holds no catalog records"
    )
    what = (
        "no usable rows"
        if not accepted
        else (
            f"{refused:,} of {summary.read:,} lines refused ({share:.1%}), more than catalog.max_reject_fraction={limit}"
        )
    )
    hint = "; fix the input" + (
        ", or raise catalog.max_reject_fraction (e.g. --set catalog.max_reject_fraction=1) "
        "if that share is expected"
        if accepted
        else ""
    )
    raise BuildError(
        f"{what} in {', '.join(map(str, paths))}: {summary.summary()}; {where}; nothing was written{hint}"
    )


def _chunks(rows: Iterable[CatalogRow], size: int) -> Iterator[list[CatalogRow]]:
    chunk: list[CatalogRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _NoProgress:
    """The bar of a run without progress output: importing tqdm.auto alone costs ~0.1 s (asyncio)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, desc: str, total: int | None = None) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", desc=desc, position=1, leave=True)


def _sources(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        path = Path(p)
        try:
            st = path.stat()
            out.append({"path": str(p), "size": st.st_size, "mtime": int(st.st_mtime)})
        except OSError:
            out.append({"path": str(p)})
    return out


def _insert_resolving(
    conn: sqlite3.Connection,
    records: list[tuple],
    taken_elsewhere: Callable[[Sequence[int]], set[int]] | None = None,
) -> list[tuple]:
    """Insert rows; on the (~1e-7) chance of a faiss_id collision, salt the later uid's id.

    Returns the records as stored (with the final faiss_id). A uid already present is skipped
    (the catalog reader de-duplicates, so this only guards direct callers). `taken_elsewhere(ids)`
    returns those of `ids` used by rows outside this table (an update's delta: the live base rows).
    """
    sql = "INSERT INTO rows (faiss_id, uid, title, content, content_hash, source, line) VALUES (?, ?, ?, ?, ?, ?, ?)"
    clash = taken_elsewhere([r[0] for r in records]) if taken_elsewhere is not None else set()
    if not clash:
        conn.execute("SAVEPOINT chunk")
        try:
            conn.executemany(sql, records)
            conn.execute("RELEASE chunk")
            return records
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO chunk")
            conn.execute("RELEASE chunk")
    stored = []
    for record in records:
        uid, salt, faiss_id = record[1], 0, record[0]
        while True:
            try:
                if taken_elsewhere is not None and taken_elsewhere([faiss_id]):
                    raise sqlite3.IntegrityError("faiss_id taken by a base row")
                conn.execute(sql, (faiss_id, *record[1:]))
                stored.append((faiss_id, *record[1:]))
                break
            except sqlite3.IntegrityError:
                if conn.execute("SELECT 1 FROM rows WHERE uid = ?", (uid,)).fetchone():
                    log.warning("uid %r appears twice; keeping the first", uid)
                    break
                salt += 1
                faiss_id = uid_to_id(f"{uid}\x00{salt}")
                log.warning("faiss id collision for uid %r; using salted id %d", uid, faiss_id)
    return stored


def _record(row: CatalogRow, faiss_id: int | None = None) -> tuple:
    return (
        uid_to_id(row.uid) if faiss_id is None else faiss_id,
        row.uid,
        row.title,
        row.content or "",
        content_hash(row.title, row.content or ""),
        row.source,
        row.line,
    )


def _records(rows: Sequence[CatalogRow]) -> list[tuple]:
    """`_record` of each row, with `content_hash` inlined: the SQLite thread's per-row Python work
    (3.7 -> 2.4 us a row measured at 300k rows; it holds the GIL the reading loop also needs)."""
    blake2b, to_id = hashlib.blake2b, uid_to_id
    out = []
    for row in rows:
        title, content = row.title, row.content or ""
        digest = blake2b(title.encode("utf-8"), digest_size=16)  # = content_hash(title, content)
        digest.update(b"\x1f")
        digest.update(content.encode("utf-8"))
        out.append((to_id(row.uid), row.uid, title, content, digest.hexdigest(), row.source, row.line))
    return out


def _lexical_module(config: Config) -> Any:
    if not config.index.descriptions:
        return None
    try:
        return importlib.import_module("index.lexical")
    except ModuleNotFoundError as exc:
        if exc.name == "index.lexical":
            return None
        raise


def _embedder(config: Config, embedder: Embedder | None) -> Embedder:
    if embedder is not None:
        return embedder
    from .embedder import load_embedder

    return load_embedder(config.embedding)


def _finish(
    store: IndexStore,
    config: Config,
    version_dir: Path,
    manifest: dict[str, Any],
    *,
    parent_dir: Path | None = None,
    parent_manifest: dict[str, Any] | None = None,
    hash_cache: HashCache | None = None,
) -> tuple[str, list[str]]:
    """Write the manifest, switch `current`, drop versions beyond index.keep_versions. Lock held."""
    version = store.commit_version(
        version_dir, manifest, parent_dir=parent_dir, parent_manifest=parent_manifest, hash_cache=hash_cache
    )
    removed: list[str] = []
    if config.index.keep_versions and config.index.keep_versions > 0:
        removed = store._gc_locked(config.index.keep_versions)
    return version, removed


def _base_manifest(
    config: Config, embedder: Embedder, index: FaissIndex, operation: str, parent: str | None
) -> dict[str, Any]:
    import faiss

    return {
        "format": 1,
        "created": utc_now(),
        "operation": operation,
        "parent": parent,
        "embedding": {
            "model": embedder.name,
            "config_model": config.embedding.model,
            "dimension": int(embedder.dimension),
            "max_seq_length": config.embedding.max_seq_length,
        },
        "index": {
            "type": index.type,
            "params": index.params,
            "metric": "inner_product",
            "faiss_version": getattr(faiss, "__version__", "unknown"),
        },
    }


# --------------------------------------------------------------------------- build


def _store_and_embed(
    config: Config,
    reader: Any,
    paths: Sequence[Path],
    model: _ModelLoad,
    meta_path: Path,
    stages: dict[str, float],
    progress: bool,
) -> tuple[int, float, Embedder, FaissIndex]:
    """The build's pipeline: this thread reads and cleans the rows, a SQLite thread stores each chunk
    and hands the stored records to an embedding thread, which waits for the model (`model`, loading
    on its own thread meanwhile), then embeds them and adds their vectors to a new FAISS index.

    Returns (rows stored, embedding seconds, the embedder, the index) and fills `stages`."""
    bar = _progress(progress, "embedding titles")
    bulk_rows = _bulk_rows(config, model)
    embedding = _EmbeddingThread(model, config.index, config.embedding.batch_size, bulk_rows)
    sqlite = _SqliteThread(meta_path, embedding)
    interval = sys.getswitchinterval()
    if bulk_rows:
        sys.setswitchinterval(min(interval, BULK_SWITCH_INTERVAL_S))
    try:
        t_read = time.perf_counter()
        for chunk in _chunks(reader.iter_rows(paths, progress=progress), CHUNK_ROWS):
            sqlite.put(chunk)
            bar.update(len(chunk))
        read_s = time.perf_counter() - t_read
        t0 = time.perf_counter()
        sqlite.finish()
        embedding.finish()
        wait_s = time.perf_counter() - t0
    finally:  # after an error: both stop taking work first, so neither waits on the other
        sys.setswitchinterval(interval)
        sqlite.request_stop()
        embedding.request_stop()
        sqlite.stop()
        embedding.stop()
    bar.close()
    stages["read_clean_s"] = read_s  # the reading loop, including its waits for a full queue
    stages["read_wait_s"] = sqlite.put_wait_s
    stages["sqlite_s"] = sqlite.busy_s - embedding.put_wait_s  # inserting, not waiting on embedding
    stages["sqlite_wait_s"] = embedding.put_wait_s
    stages["embed_s"] = embedding.embed_s
    stages["faiss_add_s"] = embedding.add_s
    stages["pipeline_drain_s"] = wait_s  # after the last row was read: SQLite and embedding finishing
    stages["model_load_s"] = model.seconds  # on its own thread, while the first rows were read and stored
    for key in ("tokenize_s", "tokenize_wait_s"):  # the bulk embedder's own counts
        if hasattr(embedding.embedder, key):
            stages[key] = getattr(embedding.embedder, key) - embedding.counts_before.get(key, 0.0)
    # a uid already in the table is skipped (only direct callers repeat one)
    assert embedding.embedder is not None and embedding.index is not None
    return sqlite.stored, embedding.embed_s, embedding.embedder, embedding.index


class _ModelLoad:
    """The embedding model, loaded on a thread from the start of a build (16 s on the H200's host,
    where the catalog's first rows are read and stored meanwhile); `result()` waits for it.

    An `embedder` passed in is used as it is. A load that fails raises its error from `result()`.
    """

    def __init__(self, config: Config, embedder: Embedder | None) -> None:
        self.seconds = 0.0
        self._embedder = embedder
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if embedder is None:
            self._thread = threading.Thread(
                target=self._load, args=(config,), name="build-model-load", daemon=True
            )
            self._thread.start()

    def _load(self, config: Config) -> None:
        t0 = time.perf_counter()
        try:
            self._embedder = _embedder(config, None)
        except BaseException as exc:  # noqa: BLE001 - raised in the thread that asks for the model
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - t0

    @property
    def given(self) -> Embedder | None:
        """The embedder passed in (None while one is loading)."""
        return self._embedder if self._thread is None else None

    def result(self) -> Embedder:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._embedder is not None
        return self._embedder


def _bulk_rows(config: Config, model: _ModelLoad) -> int | None:
    """Titles per tokenizer chunk of the bulk embedder this build will use (None: not bulk), known
    before the model has loaded: the embedding queue is sized from it."""
    given = model.given
    if given is not None:
        rows = getattr(given, "chunk_rows", None)
        return int(rows) if rows else None
    from .embedder import _resolve_device, resolve_backend

    emb = resolve_backend(config.embedding)  # backend auto: torch on CUDA
    cuda = _resolve_device(emb.device).startswith("cuda")
    if emb.backend == "torch" and (emb.bulk is True or (emb.bulk == "auto" and cuda)):
        from .bulk_embedder import CHUNK_ROWS as BULK_CHUNK_ROWS

        return BULK_CHUNK_ROWS
    return None


def _choose_and_save(
    config: Config, embedder: Embedder, index: FaissIndex, version_dir: Path, prehash: _Prehash
) -> tuple[FaissIndex, dict[str, Any] | None, float, float]:
    """`index.type: auto`'s choice, then the FAISS file (hashed in the background once written).

    Returns (index, auto record, choice seconds, save seconds)."""
    t0 = time.perf_counter()
    index, auto = _choose_index(config, embedder, index, version_dir)
    t1 = time.perf_counter()
    index.save(version_dir / VECTORS_FILE)
    prehash.add(version_dir / VECTORS_FILE)
    return index, auto, t1 - t0, time.perf_counter() - t1


class _Background:
    """`fn()` on a thread; `result()` joins it and returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - raised by result()
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def build_index(
    config: Config, paths: Sequence[str | Path], *, progress: bool = True, embedder: Embedder | None = None
) -> BuildReport:
    """Build a new version from catalog files and make it current.

    Stages (timed in `BuildReport.stages` and the manifest's `timings`): the catalog is read and
    cleaned here (by `catalog.read_workers` processes for large JSON-lines files); a SQLite thread
    inserts each chunk of rows (one transaction) and hands the stored records to an embedding thread,
    which embeds their titles and adds them to FAISS; then the FAISS file is written, the description
    index (BM25) is built from the finished SQLite, and the manifest is committed last. A crash at
    any point leaves a version directory without a manifest, which the next writer removes.
    """
    started = time.perf_counter()
    paths = _check_inputs(paths, "(pass --data PATH or set `data` in the config)")
    store = IndexStore.from_config(config)
    stages: dict[str, float] = {}
    with store.lock():  # before the model loads: a second writer fails at once, not after seconds
        store.cleanup_leftovers()
        model = _ModelLoad(config, embedder)
        parent = store.current_version()
        version_dir = store.new_version_dir()
        rejects = _Rejects(store, version_dir, REJECTS_FILE)
        prehash = _Prehash()
        side: _Background | None = None
        try:
            reader = rejects.reader(config)
            rows, embed_seconds, embedder, index = _store_and_embed(
                config, reader, paths, model, version_dir / META_FILE, stages, progress
            )
            summary = reader.summary
            _check_rejects(config, summary, paths, rejects, require_rows=True)
            prehash.add(version_dir / META_FILE)  # final now: hashed while the index is chosen and BM25 built
            if index.ntotal != rows:  # pragma: no cover - guards against a FAISS/metadata mismatch bug
                raise BuildError(f"internal error: {index.ntotal} vectors for {rows} rows")
            # the index choice (FAISS or the GPU) and BM25 (its own processes) only read meta.sqlite: side by side
            t0 = time.perf_counter()
            chosen_embedder, flat = embedder, index
            side = _Background(
                lambda: _choose_and_save(config, chosen_embedder, flat, version_dir, prehash),
                "build-index-choice",
            )
            artifacts = _build_artifacts(config, version_dir)
            stages["lexical_s"] = time.perf_counter() - t0
            index, auto, stages["index_choose_s"], stages["faiss_save_s"] = side.result()
            stages["index_and_bm25_s"] = time.perf_counter() - t0
            rejects_names = rejects.commit(summary)
            manifest = _base_manifest(config, embedder, index, "build", parent)
            if auto is not None:
                manifest["index"]["auto"] = auto
            manifest.update(
                rows=rows,
                sources=_sources(paths),
                read_summary=summary.to_dict() if hasattr(summary, "to_dict") else None,
                artifacts=artifacts,
                segments={"base": {"rows": rows, "version": version_dir.name}},
                timings={
                    **{k: round(v, 3) for k, v in stages.items()},
                    "total_before_commit_s": round(time.perf_counter() - started, 3),
                },
                file_names=[VECTORS_FILE, META_FILE, *artifacts, *rejects_names],
            )
            t0 = time.perf_counter()
            version, removed = _finish(store, config, version_dir, manifest, hash_cache=prehash.result())
            stages["manifest_s"] = time.perf_counter() - t0
            if model.given is None and hasattr(embedder, "close"):  # loaded here: its tokenizer processes end
                embedder.close()
        except BaseException as exc:
            if side is not None:  # it writes into the version directory: let it end before that goes
                side.join()
            prehash.stop()
            rejects.keep()
            shutil.rmtree(version_dir, ignore_errors=True)
            _reraise_input_error(exc, store, parent)
            raise
    return BuildReport(
        version=version,
        rows=rows,
        seconds=time.perf_counter() - started,
        read_summary=summary,
        embed_seconds=embed_seconds,
        index_type=index.type,
        path=str(version_dir),
        embedding_model=embedder.name,
        removed_versions=removed,
        stages={k: round(v, 3) for k, v in stages.items()},
    )


class _StageThread:
    """One stage of the build pipeline on its own thread: `put` items, `finish` at the end.

    The caller (`put`) hands items over through a queue of at most `max_pending` items (default
    `MAX_PENDING`: bounded memory), and the time it spends waiting on a full queue is `put_wait_s`;
    the thread calls `handle(item)` for each in order, then `close()` once after the last (not after
    an error). SQLite, FAISS and the model release the GIL while they compute, so the stages run
    side by side with the reading loop. An error in the thread is raised in the caller at its next
    `put` (or at `finish`); `stop` ends the thread without more work (the build failed elsewhere).
    """

    MAX_PENDING = 8

    def __init__(self, name: str, max_pending: int | None = None) -> None:
        self.error: BaseException | None = None
        self.busy_s = self.put_wait_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max(self.MAX_PENDING, max_pending or 0))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def handle(self, item: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """After the last item (in the thread)."""

    def setup(self) -> None:
        """Before the first item (in the thread)."""

    def put(self, item: Any) -> None:
        """Queue `item`; raises the thread's error instead of waiting on a thread that ended."""
        t0 = time.perf_counter()
        try:
            while True:
                self._raise()
                if isinstance(self.error, _Stopped) or not self._thread.is_alive():
                    raise self.error or _Stopped()
                try:
                    self._queue.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
        finally:
            self.put_wait_s += time.perf_counter() - t0

    def finish(self) -> None:
        """Wait until every item is handled and `close` ran; raises the thread's error, if any."""
        self.put(_END)
        self._thread.join()
        self._raise()

    def request_stop(self) -> None:
        """Tell the thread to take no more work (it finishes the item in hand)."""
        if self._thread.is_alive() and self.error is None:
            self.error = _Stopped()

    def stop(self) -> None:
        """`request_stop`, then wait for the thread to end (after an error elsewhere; no-op after `finish`)."""
        if not self._thread.is_alive():
            return
        self.request_stop()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            with contextlib.suppress(queue.Full):  # full again: drained next round
                self._queue.put_nowait(_END)
            self._thread.join(0.05)

    def _raise(self) -> None:
        if self.error is not None and not isinstance(self.error, _Stopped):
            raise self.error

    def _run(self) -> None:
        try:
            self.setup()
            while True:
                item = self._queue.get()
                if item is _END or self.error is not None:
                    break
                t0 = time.perf_counter()
                self.handle(item)
                self.busy_s += time.perf_counter() - t0
            if self.error is None:
                t0 = time.perf_counter()
                self.close()
                self.busy_s += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc


_END = object()


class _EmbeddingThread(_StageThread):
    """Embeds the titles of stored records and adds them to FAISS under their stored faiss ids, in order.

    Items are (faiss ids, titles) of one stored chunk, grouped into calls of `embed_rows` titles: the
    bulk embedder's `chunk_rows` times `BULK_CHUNKS_PER_CALL` (its tokenizer thread works on the next
    chunk while the GPU runs one, so only the first chunk of a call waits for it), `CHUNK_ROWS` for
    other embedders. The queue holds two calls' worth of chunks, so the SQLite thread goes on
    inserting the next call's rows while one is embedded (with the 8-chunk queue of the other stages,
    a 262,144-title bulk call left it blocked for most of each call). Only ids and titles wait there,
    not the rows' descriptions: about 100 bytes a row.
    """

    def __init__(self, model: _ModelLoad, index_config: Any, batch_size: int, bulk_rows: int | None) -> None:
        self.model, self.index_config, self.batch_size = model, index_config, batch_size
        self.embedder: Embedder | None = None
        self.index: FaissIndex | None = None
        self.counts_before: dict[str, float] = {}
        self.embed_rows = BULK_CHUNKS_PER_CALL * int(bulk_rows) if bulk_rows else CHUNK_ROWS
        self.embed_s = self.add_s = 0.0
        self._ids: list[np.ndarray] = []
        self._titles: list[str] = []
        super().__init__("build-embedding", max_pending=2 * -(-self.embed_rows // CHUNK_ROWS))

    def setup(self) -> None:
        """Wait for the model (the queue fills meanwhile), then make the empty index of its dimension."""
        self.embedder = self.model.result()
        self.index = FaissIndex.from_config(self.embedder.dimension, self.index_config)
        bulk_rows = getattr(self.embedder, "chunk_rows", None)
        if bulk_rows:
            self.embed_rows = BULK_CHUNKS_PER_CALL * int(bulk_rows)
        self.counts_before = {
            k: float(getattr(self.embedder, k))
            for k in ("tokenize_s", "tokenize_wait_s")
            if hasattr(self.embedder, k)
        }

    def handle(self, stored: tuple[np.ndarray, list[str]]) -> None:
        ids, titles = stored
        self._ids.append(ids)
        self._titles.extend(titles)
        if len(self._titles) >= self.embed_rows:
            self._embed()

    def close(self) -> None:
        if self._titles:
            self._embed()

    def _embed(self) -> None:
        titles, ids = self._titles, np.concatenate(self._ids)
        self._titles, self._ids = [], []
        assert self.embedder is not None and self.index is not None
        t0 = time.perf_counter()
        vectors = self.embedder.embed(titles, batch_size=self.batch_size)
        t1 = time.perf_counter()
        self.index.add(ids, vectors)
        self.embed_s += t1 - t0
        self.add_s += time.perf_counter() - t1


class _SqliteThread(_StageThread):
    """Inserts records into the new meta.sqlite (one transaction) and hands the stored ones on to `then`."""

    def __init__(self, path: Path, then: _StageThread) -> None:
        self.path, self.then = path, then
        self.conn: sqlite3.Connection | None = None
        self.stored = 0
        super().__init__("build-sqlite")

    def setup(self) -> None:
        self.conn = open_for_writing(self.path)  # a connection belongs to the thread that opened it
        self.conn.execute(f"PRAGMA cache_size=-{BUILD_SQLITE_CACHE_KIB}")  # the uid index stays in memory
        self.conn.execute("BEGIN")

    def handle(self, chunk: list[CatalogRow]) -> None:
        assert self.conn is not None
        stored = _insert_resolving(self.conn, _records(chunk))
        self.stored += len(stored)
        if stored:
            ids = np.fromiter((r[0] for r in stored), dtype=np.int64, count=len(stored))
            self.then.put((ids, [r[2] for r in stored]))

    def close(self) -> None:
        assert self.conn is not None
        self.conn.execute("COMMIT")
        self.conn.close()
        self.conn = None

    def _run(self) -> None:
        super()._run()
        if self.conn is not None:  # after an error: the version dir is removed anyway
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()


class _Prehash:
    """Hashes the version's finished files on a thread while the build goes on (the manifest needs them).

    `add(path)` once a file is final (nothing writes it again: meta.sqlite after the pipeline, which
    BM25 then only reads, vectors.faiss after its save); `result()` waits and returns a `HashCache`
    for `commit_version`, which uses a digest only while the file's (device, inode, size, mtime)
    are still those it had when hashed, and hashes it again otherwise. A file that cannot be read
    here is simply hashed at commit. `stop()` ends the thread at its next block (after an error).
    """

    BLOCK = 4 << 20

    def __init__(self) -> None:
        self.cache: HashCache = {}
        self._paths: queue.Queue[Path | None] = queue.Queue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="build-prehash", daemon=True)
        self._thread.start()

    def add(self, path: Path) -> None:
        self._paths.put(path)

    def result(self) -> HashCache:
        self._paths.put(None)
        self._thread.join()
        return self.cache

    def stop(self) -> None:
        self._stopped.set()
        self._paths.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (path := self._paths.get()) is not None:
            with contextlib.suppress(OSError):
                self._hash(path)

    def _hash(self, path: Path) -> None:
        before = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(self.BLOCK):
                if self._stopped.is_set():
                    return
                digest.update(block)
        after = path.stat()
        key = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
        if key == (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns):
            self.cache[key] = digest.hexdigest()


class _Stopped(Exception):
    """The embedding thread was told to stop (the build failed elsewhere)."""


def _choose_index(
    config: Config, embedder: Embedder, index: FaissIndex, version_dir: Path
) -> tuple[FaissIndex, dict[str, Any] | None]:
    """`index.type: auto`: keep the flat index or replace it by a tuned ivf one (index/autoindex.py)."""
    if config.index.type != "auto":
        return index, None
    from .autoindex import finish_auto_index, sqlite_titles, torch_device
    from .embedder import _resolve_device, resolve_backend

    def embed(texts: list[str]) -> np.ndarray:
        return embedder.embed(texts, batch_size=config.embedding.batch_size)

    # on the embedding's GPU when there is one (k-means, list assignment, exact top-k), else FAISS on the CPU
    emb = resolve_backend(config.embedding)
    device = torch_device(_resolve_device(emb.device)) if emb.backend == "torch" else None
    return finish_auto_index(
        index, config.index, embed, sqlite_titles(version_dir / META_FILE), device=device
    )


def _build_artifacts(
    config: Config, version_dir: Path, meta_path: Path | None = None, **update: Any
) -> list[str]:
    """Run the lexical hook. `meta_path`: the rows it reads (an update passes the delta's SQLite)."""
    lexical = _lexical_module(config)
    if lexical is None:
        return []
    meta_path = meta_path or version_dir / META_FILE
    if update and hasattr(lexical, "update_artifacts"):
        names = lexical.update_artifacts(
            meta_path,
            version_dir,
            update["parent_dir"],
            update["changed_uids"],
            update["deleted_uids"],
            config,
        )
    elif hasattr(lexical, "build_artifacts"):
        names = lexical.build_artifacts(meta_path, version_dir, config)
    else:
        return []
    names = [str(n) for n in names or []]
    for name in names:
        if not (version_dir / name).is_file() or "/" in name:
            raise BuildError(f"index.lexical returned {name!r}, which is not a file inside {version_dir}")
    return names


# --------------------------------------------------------------------------- update


def read_uid_list(path: str | Path) -> list[str]:
    """One uid per line (UTF-8); blank lines and lines starting with # are ignored."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: uid list not found (one uid per line)")
    if path.is_dir():
        raise BuildError(f"{path}: is a directory; --delete takes a file of uids, one per line")
    uids = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise BuildError(
                    f"{path}: line {number} is not valid UTF-8 (byte {exc.start + 1} of the line: "
                    f"{raw[exc.start : exc.start + 4]!r}); the uid list must be UTF-8 text, one uid per "
                    "line"
                ) from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line and not line.startswith("#"):
                uids.append(line)
    return uids


def _check_inputs(paths: Sequence[str | Path], hint: str = "") -> list[Path]:
    """Each catalog path exists and is a file (checked before the lock and the model are taken)."""
    checked = [Path(p) for p in paths]
    for path in checked:
        if not path.exists():
            raise FileNotFoundError(f"{path}: catalog file not found" + (f" {hint}" if hint else ""))
        if path.is_dir():
            raise BuildError(
                f"{path}: is a directory; pass catalog files (trn.json, .jsonl, .json, .gz), "
                f"e.g. --data {path}/*.jsonl; nothing was written"
            )
    return checked


def _reraise_input_error(exc: BaseException, store: IndexStore, parent: str | None) -> None:
    """A catalog file that cannot be read, or a full disk: one line that says nothing was written."""
    import errno

    from rag.catalog import CatalogError

    kept = f"index {parent} stays current" if parent else "no index was written"
    if isinstance(exc, CatalogError):
        raise BuildError(f"{exc}; nothing was written ({kept})") from None
    disk_full = (
        (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
        or (isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc))
        or (isinstance(exc, RuntimeError) and os.strerror(errno.ENOSPC) in str(exc))
    )  # FAISS's write error
    if disk_full:
        where = getattr(exc, "filename", None) or store.root
        raise DiskFullError(
            f"{where}: no space left on the device ({str(exc).splitlines()[0][:200]}); the unfinished version was "
            f"removed and nothing was written ({kept}); free space under {store.root} (e.g. "
            "`rag index gc --keep 1`) and run the command again"
        ) from None


def update_index(
    config: Config,
    paths: Sequence[str | Path] = (),
    delete_uids: Sequence[str] = (),
    *,
    progress: bool = True,
    embedder: Embedder | None = None,
    compact: bool | None = None,
    store: IndexStore | None = None,
) -> UpdateReport:
    """Upsert the rows of `paths` and delete `delete_uids` (deletions first), as a new version.

    `compact`: None (default) writes a fresh base when the delta passes `index.compact_ratio` of
    the base; True always does; False never does, except when the description index cannot be
    updated incrementally (no update hook, or it would rebuild itself from all rows).

    The embedding model is loaded only when a title must be embedded (a new row or a changed
    title): deletions, unchanged rows and description-only changes never load it.

    `store`: the serving process's store of `config.index.path` (its `LiveIndex.store`): the files
    this update verified are then known to it, and its reload hashes only the new files.
    """
    started = time.perf_counter()
    paths = _check_inputs(paths)
    if store is None:
        store = IndexStore.from_config(config)
    elif store.root.resolve() != Path(config.index.path).resolve():
        raise ValueError(f"update_index: store {store.root} is not index.path {config.index.path}")
    with store.lock():
        parent, parent_dir, parent_manifest = _current_parent(store, "update")
        lazy = _LazyEmbedder(config, embedder, parent_dir, parent_manifest)
        # Verify the parent before building on it: never propagate a damaged file. Base files that
        # are the same inode, size and mtime as when they were hashed are not re-read (their hash is
        # carried into the new version, so damage stays detectable); every other file is hashed.
        t0 = time.perf_counter()
        hash_cache: HashCache = {}
        parent_check = store.verify(parent, trust_base_stat=True, hash_cache=hash_cache, base_counts=False)
        if not parent_check.ok:
            raise BuildError(
                f"the current version {parent} fails verification, not updating it: "
                + "; ".join(parent_check.problems)
                + " (run `rag index rollback` or rebuild)"
            )
        version_dir = store.new_version_dir()
        job = _Update(
            config=config,
            store=store,
            parent=_Parent(parent, parent_dir, parent_manifest),
            version_dir=version_dir,
            embedder=lazy,
            rejects=_Rejects(store, version_dir, UPDATE_REJECTS_FILE),
            hash_cache=hash_cache,
            timings={"parent_check_s": time.perf_counter() - t0},
            started=started,
            progress=progress,
        )
        try:
            report = job.run(paths, delete_uids, compact)
        except BaseException as exc:
            job.rejects.keep()
            shutil.rmtree(version_dir, ignore_errors=True)
            _reraise_input_error(exc, store, parent)
            raise
        if not report.changed:  # nothing to commit: the history (keep_versions) stays as it is
            job.rejects.keep(report.read_summary)
            shutil.rmtree(version_dir, ignore_errors=True)
            report.version, report.rows, report.path = parent, int(parent_manifest["rows"]), str(parent_dir)
    store.remember_hashes(hash_cache)
    report.seconds = time.perf_counter() - started
    return report


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (files of a committed version never change, so sharing the inode is safe), else copy.

    The copy is the fallback across file systems; its hash is then computed, not carried.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class _Delta:
    """The writable delta of a version being written: delta.sqlite, delta vectors, tombstones.

    Row resolution (the same as `IndexSnapshot`): a uid's row is its delta row if any, else its
    base row unless the base id is tombstoned. Every delta row's vector is either in the delta
    vectors (new or re-embedded title) or, for a metadata-only change of a base row, still in the
    base (its id is then not tombstoned).
    """

    def __init__(
        self, version_dir: Path, parent_dir: Path, parent_manifest: dict[str, Any], dimension: int
    ) -> None:
        self.base_rows, parent_delta = segment_counts(parent_manifest)
        self.base = MetadataReader(parent_dir / META_FILE)  # immutable, read-only
        self.path = version_dir / DELTA_META_FILE
        if parent_delta is not None:
            shutil.copyfile(parent_dir / DELTA_META_FILE, self.path)  # small: the rows changed since the base
            self.tomb = set(
                load_tombstones(parent_dir / TOMBSTONES_FILE, parent_delta["tombstones"]).tolist()
            )
            self.vectors = FaissIndex.load(parent_dir / DELTA_VECTORS_FILE, "flat", dimension, {}, mmap=False)
        else:
            self.tomb = set()
            self.vectors = FaissIndex.create(dimension, "flat")
        import faiss

        self.vector_ids: set[int] = (
            set(faiss.vector_to_array(self.vectors.raw.id_map).tolist()) if self.vectors.ntotal else set()
        )
        self.conn = open_for_writing(self.path)
        self.conn.execute("BEGIN")
        self.remove_vectors: set[int] = set()

    def lookup(self, uids: Sequence[str]) -> dict[str, tuple[int, str, str, str]]:
        """uid -> (faiss_id, title, content_hash, "delta" | "base") for the live rows among `uids`."""
        out: dict[str, tuple[int, str, str, str]] = {}
        uids = list(uids)
        for start in range(0, len(uids), 900):
            part = uids[start : start + 900]
            for fid, uid, title, chash in self.conn.execute(
                f"SELECT faiss_id, uid, title, content_hash FROM rows WHERE uid IN ({','.join('?' * len(part))})",
                part,
            ):
                out[uid] = (int(fid), title, chash, "delta")
        rest = [u for u in uids if u not in out]
        for uid, (fid, title, chash) in self.base.lookup_uids(rest).items():
            if fid not in self.tomb:
                out[uid] = (fid, title, chash, "base")
        return out

    def base_taken(self, ids: Sequence[int]) -> set[int]:
        """ids used by live base rows (a new row must not take one)."""
        return {i for i in self.base.present_ids(ids) if i not in self.tomb}

    def drop_vector(self, faiss_id: int) -> None:
        """The row's current vector goes away: from the delta vectors, else tombstone it in the base."""
        if faiss_id in self.vector_ids:
            self.remove_vectors.add(faiss_id)
            self.vector_ids.discard(faiss_id)
        else:
            self.tomb.add(faiss_id)

    def finish(self, add_ids: list[np.ndarray], add_vectors: list[np.ndarray]) -> int:
        """Commit the rows, apply the vector changes, check the invariants; returns the live row count."""
        self.conn.execute("COMMIT")
        if self.remove_vectors:
            self.vectors.remove(np.array(sorted(self.remove_vectors), dtype=np.int64))
        if add_ids:
            ids = np.concatenate(add_ids)
            self.vectors.add(ids, np.concatenate(add_vectors))
            self.vector_ids.update(ids.tolist())
        row_ids = {int(r[0]) for r in self.conn.execute("SELECT faiss_id FROM rows")}
        self.conn.close()
        overrides = row_ids - self.vector_ids  # metadata-only changes of live base rows
        if (
            not self.vector_ids <= row_ids
            or overrides & self.tomb
            or self.vectors.ntotal != len(self.vector_ids)
        ):
            raise BuildError(
                f"internal error: delta rows {len(row_ids)}, delta vectors {self.vectors.ntotal}, "
                f"tombstones {len(self.tomb)} disagree"
            )
        self.rows = len(row_ids)
        return self.base_rows - len(self.tomb) + self.vectors.ntotal

    def close(self) -> None:
        self.base.close()


class _LazyEmbedder:
    """The update's embedder, loaded on the first title to embed and checked against the parent.

    A delete-only update, one whose rows are all unchanged, or one that changes descriptions only
    never loads the model (seconds of start-up and hundreds of MB for nothing). An embedder passed
    by the caller costs nothing to check, so it is checked at once.
    """

    def __init__(
        self, config: Config, given: Embedder | None, parent_dir: Path, parent_manifest: dict[str, Any]
    ) -> None:
        self.config = config
        self.built_with = parent_manifest["embedding"]
        self.manifest_path = parent_dir / "manifest.json"
        self.loaded: Embedder | None = None
        if given is not None:
            self.loaded = self._checked(given)

    def _checked(self, embedder: Embedder) -> Embedder:
        built_with = self.built_with
        if built_with["model"] != embedder.name or int(built_with["dimension"]) != embedder.dimension:
            raise BuildError(
                f"{self.manifest_path}: the index was built with {built_with['model']} "
                f"(dimension {built_with['dimension']}) but embedding.model gives {embedder.name} "
                f"(dimension {embedder.dimension}); rebuild with `rag index build` or set embedding.model back"
            )
        return embedder

    def embed(self, titles: list[str]) -> np.ndarray:
        if self.loaded is None:
            self.loaded = self._checked(_embedder(self.config, None))
        return self.loaded.embed(titles, batch_size=self.config.embedding.batch_size)


@dataclass
class _Parent:
    """The committed version an update builds on."""

    version: str
    dir: Path
    manifest: dict[str, Any]


@dataclass
class _Changes:
    """What the rows of an update did, collected while reading; vectors are applied once at the end."""

    summary: Any = None
    deleted_uids: list[str] = field(default_factory=list)
    deleted_ids: list[int] = field(default_factory=list)
    changed_uids: list[str] = field(default_factory=list)
    changed_ids: list[int] = field(default_factory=list)
    add_ids: list[np.ndarray] = field(default_factory=list)
    add_vectors: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Segments:
    """What step 3 wrote: the manifest's segments, index, artifacts and file names."""

    compacted: bool
    segments: dict[str, Any]
    index_info: dict[str, Any]
    artifacts: list[str]
    file_names: list[str]


@dataclass
class _Update:
    """One incremental update, in steps: deletions, upserts, then a new delta or a compacted base.

    Lock held by the caller, which also removes `version_dir` when `run` raises or changes nothing.
    """

    config: Config
    store: IndexStore
    parent: _Parent
    version_dir: Path
    embedder: _LazyEmbedder
    rejects: _Rejects
    hash_cache: HashCache
    timings: dict[str, float]
    started: float
    progress: bool = True

    def run(self, paths: list[Path], delete_uids: Sequence[str], compact: bool | None) -> UpdateReport:
        dimension = int(self.parent.manifest["embedding"]["dimension"])
        t0 = time.perf_counter()
        delta = _Delta(self.version_dir, self.parent.dir, self.parent.manifest, dimension)
        report = UpdateReport(
            version="", parent=self.parent.version, rows=0, seconds=0.0, path=str(self.version_dir)
        )
        changes = _Changes()
        try:
            self._delete(delta, delete_uids, report, changes)
            if paths:
                self._upsert(delta, paths, report, changes)
            if not (report.inserted or report.updated or report.metadata_only or report.deleted):
                report.changed = False  # an identical version would only push a real one out of keep_versions
                delta.conn.close()  # nothing to commit; the version dir is removed by the caller
                return report
            rows = delta.finish(changes.add_ids, changes.add_vectors)
            self.timings["rows_s"] = time.perf_counter() - t0 - report.embed_seconds
            self.timings["embed_s"] = report.embed_seconds
            written = self._write_segments(delta, rows, changes, compact)
        finally:
            delta.close()
        self._commit(self._manifest(rows, paths, changes, report, written), report)
        report.rows = rows
        report.compacted = written.compacted
        report.delta_rows = 0 if written.compacted else delta.rows
        report.tombstones = 0 if written.compacted else len(delta.tomb)
        report.timings = {k: round(v, 3) for k, v in self.timings.items()}
        return report

    # ------------------------------------------------------------------ 1. deletions

    def _delete(
        self, delta: _Delta, delete_uids: Sequence[str], report: UpdateReport, changes: _Changes
    ) -> None:
        unique = list(dict.fromkeys(delete_uids))
        found = delta.lookup(unique)
        for uid in unique:
            hit = found.get(uid)
            if hit is None:
                report.delete_missing += 1
                continue
            faiss_id, _title, _hash, where = hit
            if where == "delta":
                delta.conn.execute("DELETE FROM rows WHERE faiss_id = ?", (faiss_id,))
            delta.drop_vector(faiss_id)
            changes.deleted_uids.append(uid)
            changes.deleted_ids.append(faiss_id)
        report.deleted = len(changes.deleted_uids)

    # ------------------------------------------------------------------ 2. upserts

    def _upsert(self, delta: _Delta, paths: list[Path], report: UpdateReport, changes: _Changes) -> None:
        reader = self.rejects.reader(self.config)
        bar = _progress(self.progress, "updating rows")
        for chunk in _chunks(reader.iter_rows(paths, progress=self.progress), CHUNK_ROWS):
            to_embed = self._upsert_chunk(delta, chunk, report, changes)
            if to_embed:
                t1 = time.perf_counter()
                changes.add_vectors.append(self.embedder.embed([r[2] for r in to_embed]))
                report.embed_seconds += time.perf_counter() - t1
                changes.add_ids.append(np.array([r[0] for r in to_embed], dtype=np.int64))
                report.embedded += len(to_embed)
            bar.update(len(chunk))
        bar.close()
        changes.summary = report.read_summary = reader.summary
        _check_rejects(self.config, reader.summary, paths, self.rejects, require_rows=False)

    def _upsert_chunk(
        self, delta: _Delta, chunk: list[CatalogRow], report: UpdateReport, changes: _Changes
    ) -> list[tuple]:
        """Write the chunk's rows into the delta; returns the records whose title must be embedded."""
        conn = delta.conn
        existing = delta.lookup([row.uid for row in chunk])
        new_rows: list[CatalogRow] = []
        to_embed: list[tuple] = []
        for row in chunk:
            record = _record(row)
            old = existing.get(row.uid)
            if old is None:
                new_rows.append(row)
                continue
            faiss_id, old_title, old_hash, where = old
            if old_hash == record[4]:
                report.unchanged += 1
                continue
            record = (faiss_id, *record[1:])  # keep the id the uid already has (stable, even if salted)
            if where == "delta":
                conn.execute(
                    "UPDATE rows SET title=?, content=?, content_hash=?, source=?, line=? WHERE faiss_id=?",
                    (record[2], record[3], record[4], record[5], record[6], faiss_id),
                )
            else:
                conn.execute(
                    "INSERT INTO rows (faiss_id, uid, title, content, content_hash, source, line) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    record,
                )
            changes.changed_uids.append(row.uid)
            changes.changed_ids.append(faiss_id)
            if old_title == row.title:
                report.metadata_only += 1  # the vector (base or delta) is still right
            else:
                report.updated += 1
                delta.drop_vector(faiss_id)
                to_embed.append(record)
        if new_rows:
            stored = _insert_resolving(conn, [_record(r) for r in new_rows], delta.base_taken)
            report.inserted += len(stored)
            changes.changed_uids.extend(r[1] for r in stored)
            changes.changed_ids.extend(r[0] for r in stored)
            to_embed.extend(stored)
        return to_embed

    # ------------------------------------------------------------------ 3. compaction or a new delta

    def _write_segments(self, delta: _Delta, rows: int, changes: _Changes, compact: bool | None) -> _Segments:
        lexical = _lexical_module(self.config)
        lexical_full = lexical is not None and (
            not hasattr(lexical, "update_artifacts")
            or _lexical_needs_full_build(lexical, self.parent.dir, changes.changed_ids, changes.deleted_ids)
        )
        ratio = float(getattr(self.config.index, "compact_ratio", 0.1) or 0)
        pending = delta.rows + len(delta.tomb)
        over = (
            ratio > 0
            and pending > ratio * delta.base_rows
            and pending > int(getattr(self.config.index, "compact_min_rows", 0))
        )
        do_compact = lexical_full or (over if compact is None else compact)
        extra = self.rejects.commit(changes.summary)
        if do_compact:
            return self._write_compacted(delta, rows, extra)
        return self._write_delta(delta, changes, lexical, extra)

    def _write_compacted(self, delta: _Delta, rows: int, extra: list[str]) -> _Segments:
        t0 = time.perf_counter()
        index = _write_compacted_base(
            self.parent.dir,
            self.parent.manifest,
            self.version_dir,
            delta.path,
            delta.vectors,
            delta.tomb,
            rows,
        )
        os.unlink(delta.path)
        self.timings["compact_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        artifacts = _build_artifacts(self.config, self.version_dir)
        self.timings["lexical_s"] = time.perf_counter() - t0
        index_info = _index_info(index, self.parent.manifest)
        return _Segments(
            compacted=True,
            segments={"base": {"rows": rows, "version": self.version_dir.name}},
            index_info=index_info,
            artifacts=artifacts,
            file_names=[VECTORS_FILE, META_FILE, *artifacts, *extra],
        )

    def _write_delta(self, delta: _Delta, changes: _Changes, lexical: Any, extra: list[str]) -> _Segments:
        t0 = time.perf_counter()
        parent_dir, version_dir = self.parent.dir, self.version_dir
        for name in (VECTORS_FILE, META_FILE):
            _link_or_copy(parent_dir / name, version_dir / name)
        delta.vectors.save(version_dir / DELTA_VECTORS_FILE)
        with open(version_dir / TOMBSTONES_FILE, "wb") as fh:
            np.save(fh, np.array(sorted(delta.tomb), dtype=np.int64), allow_pickle=False)
        self.timings["delta_write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        artifacts = _build_artifacts(
            self.config,
            version_dir,
            meta_path=delta.path,
            parent_dir=parent_dir,
            changed_uids=changes.changed_uids,
            deleted_uids=changes.deleted_uids,
        )
        _check_lexical_kept_base(lexical, parent_dir, version_dir, artifacts)
        self.timings["lexical_s"] = time.perf_counter() - t0
        base_info = (self.parent.manifest.get("segments") or {}).get("base", {})
        return _Segments(
            compacted=False,
            segments={
                "base": {"rows": delta.base_rows, "version": base_info.get("version", self.parent.version)},
                "delta": {"rows": delta.rows, "vectors": delta.vectors.ntotal, "tombstones": len(delta.tomb)},
            },
            index_info=dict(self.parent.manifest["index"]),
            artifacts=artifacts,
            file_names=[
                VECTORS_FILE,
                META_FILE,
                DELTA_VECTORS_FILE,
                DELTA_META_FILE,
                TOMBSTONES_FILE,
                *artifacts,
                *extra,
            ],
        )

    # ------------------------------------------------------------------ 4. manifest and commit

    def _manifest(
        self, rows: int, paths: list[Path], changes: _Changes, report: UpdateReport, written: _Segments
    ) -> dict[str, Any]:
        summary = changes.summary
        parent_manifest = self.parent.manifest
        manifest: dict[str, Any] = {
            "format": 1,
            "created": utc_now(),
            "operation": "update",
            "parent": self.parent.version,
            "embedding": dict(parent_manifest["embedding"]),
            "index": written.index_info,
        }
        manifest.update(
            rows=rows,
            segments=written.segments,
            sources=parent_manifest.get("sources", []) + _sources(paths),
            read_summary=summary.to_dict() if summary is not None and hasattr(summary, "to_dict") else None,
            artifacts=written.artifacts,
            update={
                "inserted": report.inserted,
                "re_embedded": report.updated,
                "metadata_only": report.metadata_only,
                "unchanged": report.unchanged,
                "deleted": report.deleted,
                "delete_missing": report.delete_missing,
                "compacted": written.compacted,
            },
            file_names=written.file_names,
        )
        manifest["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        manifest["timings"]["total_before_commit_s"] = round(time.perf_counter() - self.started, 3)
        return manifest

    def _commit(self, manifest: dict[str, Any], report: UpdateReport) -> None:
        t0 = time.perf_counter()
        report.version, report.removed_versions = _finish(
            self.store,
            self.config,
            self.version_dir,
            manifest,
            parent_dir=self.parent.dir,
            parent_manifest=self.parent.manifest,
            hash_cache=self.hash_cache,
        )
        self.timings["commit_s"] = time.perf_counter() - t0


def _index_info(index: FaissIndex, parent_manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `index` section of a compacted base; how `index.type: auto` chose is kept."""
    import faiss

    info = {
        "type": index.type,
        "params": index.params,
        "metric": "inner_product",
        "faiss_version": getattr(faiss, "__version__", "unknown"),
    }
    if "auto" in parent_manifest["index"]:
        info["auto"] = parent_manifest["index"]["auto"]
    return info


def _write_compacted_base(
    parent_dir: Path,
    parent_manifest: dict[str, Any],
    version_dir: Path,
    delta_db: Path,
    delta_vectors: FaissIndex,
    tomb: set[int],
    expected_rows: int,
) -> FaissIndex:
    """A fresh base (new inodes, never the parent's files) = parent base - tombstones + delta."""
    meta_path = version_dir / META_FILE
    shutil.copyfile(parent_dir / META_FILE, meta_path)
    conn = open_for_writing(meta_path)
    conn.execute("BEGIN")
    conn.executemany("DELETE FROM rows WHERE faiss_id = ?", [(int(i),) for i in sorted(tomb)])
    conn.execute("COMMIT")
    conn.execute("ATTACH DATABASE ? AS d", (str(delta_db),))
    conn.execute("BEGIN")
    # a delta row replaces the base row of the same faiss_id (metadata-only change) or is new
    conn.execute(
        "INSERT OR REPLACE INTO rows (faiss_id, uid, title, content, content_hash, source, line) "
        "SELECT faiss_id, uid, title, content, content_hash, source, line FROM d.rows"
    )
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE d")
    rows = int(conn.execute("SELECT count(*) FROM rows").fetchone()[0])
    conn.close()
    info = parent_manifest["index"]
    index = FaissIndex.load(
        parent_dir / VECTORS_FILE,
        info["type"],
        int(parent_manifest["embedding"]["dimension"]),
        info.get("params", {}),
        mmap=False,
    )  # a private, writable copy
    if tomb:
        index.remove(
            np.array(sorted(tomb), dtype=np.int64)
        )  # hnsw: the one graph rebuild, at compaction only
    if delta_vectors.ntotal:
        ids, vectors = delta_vectors.export()
        index.add(ids, vectors)
    if not (rows == index.ntotal == expected_rows):
        raise BuildError(
            f"internal error: compaction gives {index.ntotal} vectors, {rows} rows, expected {expected_rows}"
        )
    index.save(version_dir / VECTORS_FILE)
    return index


def _lexical_needs_full_build(
    lexical: Any, parent_dir: Path, changed_ids: Sequence[int], deleted_ids: Sequence[int]
) -> bool:
    """Would `lexical.update_artifacts` rebuild its base from all rows? (An update hands it only the delta's rows.)

    Mirrors its rule with upper bounds (no parent index, another format, an empty base, or delta or
    tombstones past its COMPACT_FRACTION), so a True here may be conservative but a False is safe.
    """
    try:
        meta_path = parent_dir / getattr(lexical, "META_NAME", "lexical.json")
        if not meta_path.exists():
            return True
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != getattr(lexical, "FORMAT", None):
            return True
        base_docs = int(meta["segments"]["base"]["docs"])
        if base_docs == 0:
            return True
        tomb = np.load(
            parent_dir / getattr(lexical, "TOMBSTONES_NAME", "lexical.tombstones.npy"), allow_pickle=False
        )
        old_delta = (
            np.load(parent_dir / "lexical.delta.ids.npy", allow_pickle=False)
            if "delta" in meta["segments"]
            else np.zeros(0, np.int64)
        )
        changed = np.asarray(list(changed_ids), dtype=np.int64)
        deleted = np.asarray(list(deleted_ids), dtype=np.int64)
        bound = float(getattr(lexical, "COMPACT_FRACTION", 0.1)) * base_docs
        return (
            len(np.union1d(old_delta, changed)) > bound
            or len(np.union1d(np.union1d(tomb, changed), deleted)) > bound
        )
    except (KeyError, ValueError, OSError, TypeError):
        return True


def _check_lexical_kept_base(lexical: Any, parent_dir: Path, version_dir: Path, artifacts: list[str]) -> None:
    """The description index must have kept the parent's base (it was given only the delta's rows)."""
    name = getattr(lexical, "META_NAME", "lexical.json") if lexical is not None else None
    if not name or name not in artifacts:
        return
    try:
        new = json.loads((version_dir / name).read_text(encoding="utf-8"))["segments"]["base"]
        old = json.loads((parent_dir / name).read_text(encoding="utf-8"))["segments"]["base"]
    except (OSError, ValueError, KeyError) as exc:
        raise BuildError(
            f"{version_dir / name}: cannot compare with the parent's description index ({exc})"
        ) from None
    if new != old:
        raise BuildError(
            f"internal error: {version_dir / name}: the description index rebuilt its base from the "
            "delta rows only; run `rag index compact` or `rag index build`"
        )


@dataclass
class CompactReport:
    version: str | None
    parent: str
    rows: int
    seconds: float
    removed_versions: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.version is None:
            return f"index {self.parent} has no delta: nothing to compact ({self.rows:,} rows)"
        return (
            f"compacted index {self.parent} -> {self.version}: {self.rows:,} rows in one base segment "
            f"in {self.seconds:.1f}s"
            + (
                f"\n  removed old versions: {', '.join(self.removed_versions)}"
                if self.removed_versions
                else ""
            )
        )


def compact_index(config: Config, *, force: bool = False) -> CompactReport:
    """Write the current version's base - tombstones + delta as a fresh base (`rag index compact`).

    No embedding: the delta's vectors are moved into the base. A version without a delta is left
    alone unless `force`. hnsw: the graph is rebuilt once here when rows were deleted or re-embedded.
    """
    started = time.perf_counter()
    store = IndexStore.from_config(config)
    with store.lock():
        parent, parent_dir, parent_manifest = _current_parent(store, "compact")
        _base_rows, delta_counts = segment_counts(parent_manifest)
        if delta_counts is None and not force:
            return CompactReport(None, parent, int(parent_manifest["rows"]), time.perf_counter() - started)
        check = store.verify(parent)
        if not check.ok:
            raise BuildError(
                f"the current version {parent} fails verification, not compacting it: "
                + "; ".join(check.problems)
                + " (run `rag index rollback` or rebuild)"
            )
        version_dir = store.new_version_dir()
        try:
            dimension = int(parent_manifest["embedding"]["dimension"])
            private_delta = version_dir / ".compact-delta.sqlite"
            if delta_counts is not None:
                shutil.copyfile(parent_dir / DELTA_META_FILE, private_delta)
                tomb = set(load_tombstones(parent_dir / TOMBSTONES_FILE, delta_counts["tombstones"]).tolist())
                vectors = FaissIndex.load(parent_dir / DELTA_VECTORS_FILE, "flat", dimension, {}, mmap=False)
            else:
                open_for_writing(private_delta).close()
                tomb, vectors = set(), FaissIndex.create(dimension, "flat")
            index = _write_compacted_base(
                parent_dir,
                parent_manifest,
                version_dir,
                private_delta,
                vectors,
                tomb,
                int(parent_manifest["rows"]),
            )
            private_delta.unlink()
            artifacts = _build_artifacts(config, version_dir)
            rows = int(parent_manifest["rows"])
            manifest = {
                "format": 1,
                "created": utc_now(),
                "operation": "compact",
                "parent": parent,
                "embedding": dict(parent_manifest["embedding"]),
                "index": _index_info(index, parent_manifest),
                "rows": rows,
                "segments": {"base": {"rows": rows, "version": version_dir.name}},
                "sources": parent_manifest.get("sources", []),
                "read_summary": parent_manifest.get("read_summary"),
                "artifacts": artifacts,
                "timings": {"total_s": round(time.perf_counter() - started, 3)},
                "file_names": [VECTORS_FILE, META_FILE, *artifacts],
            }
            version, removed = _finish(store, config, version_dir, manifest)
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
    return CompactReport(version, parent, rows, time.perf_counter() - started, removed)
