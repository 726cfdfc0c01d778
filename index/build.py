"""Full build and incremental update of the versioned index.

    rag index build --data ../shared/data/amazontitles/trn_sample.jsonl
    rag index update --data new.jsonl --delete gone_uids.txt

Build: catalog rows (rag.catalog.CatalogReader: cleaned, validated, de-duplicated) are streamed in
chunks; each chunk goes into SQLite, its titles are embedded in batches and added to FAISS under
ids derived from the uid. Update: the parent version's metadata is copied into a new version,
rows are upserted/deleted by uid, and only rows whose *title* changed are embedded again (a row
whose content_hash is unchanged is not touched at all; a changed description alone only rewrites
metadata, because only titles are embedded). Both write a new version directory and switch
`current` atomically (index/store.py); one writer at a time.

Extension hook: when `config.index.descriptions` is true and `index.lexical` is importable,
`index.lexical.build_artifacts(meta_db_path, version_dir, config) -> list[str]` is called after
the metadata is final; the file names it returns are checksummed into the manifest as artifacts.
On update, `index.lexical.update_artifacts(meta_db_path, version_dir, parent_dir, changed_uids,
deleted_uids, config)` is preferred when it exists.
"""
from __future__ import annotations

import importlib
import logging
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.types import CatalogRow

from .metadata import META_FILE, content_hash, open_for_writing
from .store import VECTORS_FILE, IndexStore, IndexStoreError, read_manifest, utc_now
from .vector import FaissIndex, uid_to_id

if TYPE_CHECKING:
    from rag.config import Config
    from rag.types import Embedder

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"
CHUNK_ROWS = 8192  # rows per SQLite insert + embedding call: bounded memory, steady progress


class BuildError(IndexStoreError):
    """The build or update cannot proceed; the message says why and what to do."""


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

    @property
    def titles_per_s(self) -> float:
        return self.rows / self.embed_seconds if self.embed_seconds > 0 else float("nan")

    def summary(self) -> str:
        lines = [
            (
                f"built index version {self.version}: {self.rows:,} rows, {self.index_type} index, model "
                f"{self.embedding_model}, in {self.seconds:.1f}s (embedding {self.embed_seconds:.1f}s, "
                f"{self.titles_per_s:,.0f} titles/s)"
            ),
            f"  at {self.path}",
        ]
        if self.read_summary is not None:
            lines.append("  catalog: " + self.read_summary.summary())
        if self.removed_versions:
            lines.append(f"  removed old versions: {', '.join(self.removed_versions)}")
        return "\n".join(lines)


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

    def summary(self) -> str:
        lines = [
            f"updated index {self.parent} -> {self.version}: {self.rows:,} rows in {self.seconds:.1f}s",
            f"  inserted {self.inserted:,}, re-embedded {self.updated:,}, metadata only {self.metadata_only:,}, "
            f"unchanged {self.unchanged:,}, deleted {self.deleted:,}"
            + (f" ({self.delete_missing:,} uids to delete were not in the index)" if self.delete_missing else ""),
            f"  embedded {self.embedded:,} titles in {self.embed_seconds:.1f}s",
        ]
        if self.read_summary is not None:
            lines.append("  catalog: " + self.read_summary.summary())
        if self.removed_versions:
            lines.append(f"  removed old versions: {', '.join(self.removed_versions)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _reader(config: Config, rejects_path: Path) -> Any:
    try:
        from rag.catalog import CatalogReader
    except ModuleNotFoundError as exc:  # the catalog package is optional for the index mechanics
        if exc.name != "rag.catalog":
            raise
        return _MinimalReader()
    return CatalogReader(config.catalog, rejects_path)


@dataclass
class _MinimalSummary:
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0

    def summary(self) -> str:
        return (f"read {self.read:,} = accepted {self.accepted:,} + rejected {self.rejected:,} "
                f"+ duplicates {self.duplicates:,} (minimal reader: rag.catalog not installed)")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _MinimalReader:
    """Plain JSON-lines reading (no cleaning) used only where rag.catalog is absent."""

    def __init__(self) -> None:
        self.summary = _MinimalSummary()

    def iter_rows(self, paths: Sequence[str | Path], progress: bool = False) -> Iterator[CatalogRow]:
        import hashlib
        import json

        self.summary = _MinimalSummary()
        seen: set[str] = set()
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    self.summary.read += 1
                    try:
                        obj = json.loads(line)
                        title = str(obj.get("title") or "").strip()
                        content = str(obj.get("content") or "").strip()
                    except (ValueError, AttributeError):
                        self.summary.rejected += 1
                        continue
                    if not title:
                        self.summary.rejected += 1
                        continue
                    uid = obj.get("uid") or "h:" + hashlib.sha256(f"{title}\x1f{content}".encode()).hexdigest()[:16]
                    if uid in seen:
                        self.summary.duplicates += 1
                        continue
                    seen.add(uid)
                    self.summary.accepted += 1
                    yield CatalogRow(uid=str(uid), title=title, content=content, source=str(path), line=number)


def _chunks(rows: Iterable[CatalogRow], size: int) -> Iterator[list[CatalogRow]]:
    chunk: list[CatalogRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress(enabled: bool, desc: str, total: int | None = None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", desc=desc, disable=not enabled, position=1 if enabled else 0, leave=True)


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


def _insert_resolving(conn: sqlite3.Connection, records: list[tuple]) -> list[tuple]:
    """Insert rows; on the (~1e-7) chance of a faiss_id collision, salt the later uid's id.

    Returns the records as stored (with the final faiss_id). A uid already present is skipped
    (the catalog reader de-duplicates, so this only guards direct callers).
    """
    sql = "INSERT INTO rows (faiss_id, uid, title, content, content_hash, source, line) VALUES (?, ?, ?, ?, ?, ?, ?)"
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
                conn.execute(sql, (faiss_id,) + tuple(record[1:]))
                stored.append((faiss_id,) + tuple(record[1:]))
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
    return (uid_to_id(row.uid) if faiss_id is None else faiss_id, row.uid, row.title, row.content or "",
            content_hash(row.title, row.content or ""), row.source, row.line)


def _lexical_module(config: Config) -> Any:
    if not config.index.descriptions:
        return None
    try:
        return importlib.import_module("index.lexical")
    except ModuleNotFoundError as exc:
        if exc.name in ("index.lexical",):
            return None
        raise


def _embedder(config: Config, embedder: Embedder | None) -> Embedder:
    if embedder is not None:
        return embedder
    from .embedder import load_embedder

    return load_embedder(config.embedding)


def _finish(store: IndexStore, config: Config, version_dir: Path, manifest: dict[str, Any]) -> tuple[str, list[str]]:
    """Write the manifest, switch `current`, drop versions beyond index.keep_versions. Lock held."""
    version = store.commit_version(version_dir, manifest)
    removed: list[str] = []
    if config.index.keep_versions and config.index.keep_versions > 0:
        removed = store._gc_locked(config.index.keep_versions)
    return version, removed


def _base_manifest(config: Config, embedder: Embedder, index: FaissIndex, operation: str, parent: str | None) -> dict[str, Any]:
    import faiss

    return {
        "format": 1,
        "created": utc_now(),
        "operation": operation,
        "parent": parent,
        "embedding": {"model": embedder.name, "config_model": config.embedding.model,
                      "dimension": int(embedder.dimension), "max_seq_length": config.embedding.max_seq_length},
        "index": {"type": index.type, "params": index.params, "metric": "inner_product",
                  "faiss_version": getattr(faiss, "__version__", "unknown")},
    }


# --------------------------------------------------------------------------- build


def build_index(config: Config, paths: Sequence[str | Path], *, progress: bool = True,
                embedder: Embedder | None = None) -> BuildReport:
    """Build a new version from catalog files and make it current."""
    started = time.perf_counter()
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: catalog file not found (pass --data PATH or set `data` in the config)")
    embedder = _embedder(config, embedder)
    store = IndexStore.from_config(config)
    with store.lock():
        store.cleanup_leftovers()
        parent = store.current_version()
        version_dir = store.new_version_dir()
        try:
            reader = _reader(config, version_dir / REJECTS_FILE)
            index = FaissIndex.from_config(embedder.dimension, config.index)
            conn = open_for_writing(version_dir / META_FILE)
            conn.execute("BEGIN")
            rows = 0
            embed_seconds = 0.0
            bar = _progress(progress, "embedding titles")
            for chunk in _chunks(reader.iter_rows(paths, progress=progress), CHUNK_ROWS):
                stored = _insert_resolving(conn, [_record(r) for r in chunk])
                t0 = time.perf_counter()
                vectors = embedder.embed([r[2] for r in stored], batch_size=config.embedding.batch_size)
                embed_seconds += time.perf_counter() - t0
                index.add(np.array([r[0] for r in stored], dtype=np.int64), vectors)
                rows += len(stored)
                bar.update(len(stored))
            bar.close()
            conn.execute("COMMIT")
            conn.close()
            summary = reader.summary
            if rows == 0:
                raise BuildError(
                    f"no usable rows in {', '.join(map(str, paths))}: {summary.summary()}; "
                    "check the rejects file for why lines were refused"
                )
            index.save(version_dir / VECTORS_FILE)
            if index.ntotal != rows:  # pragma: no cover - guards against a FAISS/metadata mismatch bug
                raise BuildError(f"internal error: {index.ntotal} vectors for {rows} rows")
            artifacts = _build_artifacts(config, version_dir)
            manifest = _base_manifest(config, embedder, index, "build", parent)
            manifest.update(
                rows=rows,
                sources=_sources(paths),
                read_summary=summary.to_dict() if hasattr(summary, "to_dict") else None,
                artifacts=artifacts,
                timings={"embed_s": round(embed_seconds, 3), "total_s": round(time.perf_counter() - started, 3)},
                file_names=[VECTORS_FILE, META_FILE, *artifacts]
                + ([REJECTS_FILE] if (version_dir / REJECTS_FILE).exists() else []),
            )
            version, removed = _finish(store, config, version_dir, manifest)
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
    return BuildReport(
        version=version, rows=rows, seconds=time.perf_counter() - started, read_summary=summary,
        embed_seconds=embed_seconds, index_type=index.type, path=str(version_dir),
        embedding_model=embedder.name, removed_versions=removed,
    )


def _build_artifacts(config: Config, version_dir: Path, **update: Any) -> list[str]:
    lexical = _lexical_module(config)
    if lexical is None:
        return []
    meta_path = version_dir / META_FILE
    if update and hasattr(lexical, "update_artifacts"):
        names = lexical.update_artifacts(meta_path, version_dir, update["parent_dir"], update["changed_uids"],
                                         update["deleted_uids"], config)
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
    """One uid per line; blank lines and lines starting with # are ignored."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: uid list not found (one uid per line)")
    uids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            uids.append(line)
    return uids


def update_index(config: Config, paths: Sequence[str | Path] = (), delete_uids: Sequence[str] = (), *,
                 progress: bool = True, embedder: Embedder | None = None) -> UpdateReport:
    """Upsert the rows of `paths` and delete `delete_uids` (deletions first), as a new version."""
    started = time.perf_counter()
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: catalog file not found")
    store = IndexStore.from_config(config)
    with store.lock():
        store.cleanup_leftovers()
        parent = store.current_version()
        if not parent:
            raise BuildError(f"{store.current_file}: no index to update; run `rag index build --data PATH` first")
        parent_dir = store.version_dir(parent)
        parent_manifest = read_manifest(parent_dir)
        embedder = _embedder(config, embedder)
        built_with = parent_manifest["embedding"]
        if built_with["model"] != embedder.name or int(built_with["dimension"]) != embedder.dimension:
            raise BuildError(
                f"{parent_dir / 'manifest.json'}: the index was built with {built_with['model']} "
                f"(dimension {built_with['dimension']}) but embedding.model gives {embedder.name} "
                f"(dimension {embedder.dimension}); rebuild with `rag index build` or set embedding.model back"
            )
        # verify the parent fully before building on it: never propagate a damaged file
        parent_check = store.verify(parent)
        if not parent_check.ok:
            raise BuildError(f"the current version {parent} fails verification, not updating it: "
                             + "; ".join(parent_check.problems) + " (run `rag index rollback` or rebuild)")
        version_dir = store.new_version_dir()
        try:
            report = _apply_update(config, store, parent, parent_dir, parent_manifest, version_dir, paths,
                                   delete_uids, embedder, progress, started)
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
    report.seconds = time.perf_counter() - started
    return report


def _apply_update(config: Config, store: IndexStore, parent: str, parent_dir: Path, parent_manifest: dict[str, Any],
                  version_dir: Path, paths: list[Path], delete_uids: Sequence[str], embedder: Embedder,
                  progress: bool, started: float) -> UpdateReport:
    info = parent_manifest["index"]
    shutil.copyfile(parent_dir / META_FILE, version_dir / META_FILE)
    # a private, writable copy of the vectors (a memory-mapped index is read-only)
    index = FaissIndex.load(parent_dir / VECTORS_FILE, info["type"], int(parent_manifest["embedding"]["dimension"]),
                            info.get("params", {}), mmap=False)
    conn = open_for_writing(version_dir / META_FILE)
    conn.execute("BEGIN")
    report = UpdateReport(version="", parent=parent, rows=0, seconds=0.0, path=str(version_dir))

    # 1. deletions
    remove_ids: list[int] = []
    deleted_uids: list[str] = []
    for uid in dict.fromkeys(delete_uids):
        found = conn.execute("SELECT faiss_id FROM rows WHERE uid = ?", (uid,)).fetchone()
        if found is None:
            report.delete_missing += 1
            continue
        conn.execute("DELETE FROM rows WHERE faiss_id = ?", (found[0],))
        remove_ids.append(int(found[0]))
        deleted_uids.append(uid)
    report.deleted = len(deleted_uids)

    # 2. upserts, chunk by chunk; vectors of changed titles are collected and applied once
    summary = None
    changed_uids: list[str] = []
    add_ids: list[np.ndarray] = []
    add_vectors: list[np.ndarray] = []
    if paths:
        reader = _reader(config, version_dir / "update_rejects.jsonl")
        bar = _progress(progress, "updating rows")
        for chunk in _chunks(reader.iter_rows(paths, progress=progress), CHUNK_ROWS):
            marks = ",".join("?" * len(chunk))
            existing = {
                r[1]: (int(r[0]), r[2], r[3])
                for r in conn.execute(f"SELECT faiss_id, uid, title, content_hash FROM rows WHERE uid IN ({marks})",
                                      [row.uid for row in chunk])
            }
            new_rows: list[CatalogRow] = []
            to_embed: list[tuple] = []
            for row in chunk:
                record = _record(row)
                old = existing.get(row.uid)
                if old is None:
                    new_rows.append(row)
                    continue
                faiss_id, old_title, old_hash = old
                if old_hash == record[4]:
                    report.unchanged += 1
                    continue
                record = (faiss_id,) + record[1:]  # keep the id the uid already has (stable, even if salted)
                conn.execute("UPDATE rows SET title=?, content=?, content_hash=?, source=?, line=? WHERE faiss_id=?",
                             (record[2], record[3], record[4], record[5], record[6], faiss_id))
                changed_uids.append(row.uid)
                if old_title == row.title:
                    report.metadata_only += 1
                else:
                    report.updated += 1
                    remove_ids.append(faiss_id)
                    to_embed.append(record)
            if new_rows:
                stored = _insert_resolving(conn, [_record(r) for r in new_rows])
                report.inserted += len(stored)
                changed_uids.extend(r[1] for r in stored)
                to_embed.extend(stored)
            if to_embed:
                t0 = time.perf_counter()
                add_vectors.append(embedder.embed([r[2] for r in to_embed], batch_size=config.embedding.batch_size))
                report.embed_seconds += time.perf_counter() - t0
                add_ids.append(np.array([r[0] for r in to_embed], dtype=np.int64))
                report.embedded += len(to_embed)
            bar.update(len(chunk))
        bar.close()
        summary = reader.summary
        report.read_summary = summary
    conn.execute("COMMIT")
    rows = int(conn.execute("SELECT count(*) FROM rows").fetchone()[0])
    conn.close()

    # 3. vectors: remove deleted + re-embedded ids, add the new vectors (ids stay those of the uids)
    if remove_ids:
        index.remove(np.array(remove_ids, dtype=np.int64))
    if add_ids:
        index.add(np.concatenate(add_ids), np.concatenate(add_vectors))
    if index.ntotal != rows:
        raise BuildError(f"internal error: {index.ntotal} vectors but {rows} metadata rows after the update")
    index.save(version_dir / VECTORS_FILE)

    artifacts = _build_artifacts(config, version_dir, parent_dir=parent_dir, changed_uids=changed_uids,
                                 deleted_uids=deleted_uids)
    manifest = _base_manifest(config, embedder, index, "update", parent)
    extra = [n for n in ("update_rejects.jsonl",) if (version_dir / n).exists()]
    manifest.update(
        rows=rows,
        sources=parent_manifest.get("sources", []) + _sources(paths),
        read_summary=summary.to_dict() if summary is not None and hasattr(summary, "to_dict") else None,
        artifacts=artifacts,
        update={"inserted": report.inserted, "re_embedded": report.updated, "metadata_only": report.metadata_only,
                "unchanged": report.unchanged, "deleted": report.deleted, "delete_missing": report.delete_missing},
        timings={"embed_s": round(report.embed_seconds, 3), "total_s": round(time.perf_counter() - started, 3)},
        file_names=[VECTORS_FILE, META_FILE, *artifacts, *extra],
    )
    report.version, report.removed_versions = _finish(store, config, version_dir, manifest)
    report.rows = rows
    return report
