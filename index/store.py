"""The versioned on-disk index store: versions, manifest, lock, verification, hot reload.

    rag index versions | rag index verify | rag index rollback | rag index gc --keep 3

Layout under `index.path`:

    current                      the id of the version being served (replaced atomically)
    lock                         flock'ed by the one writer; holds the writer's pid
    versions/<id>/vectors.faiss  FAISS index (faiss.write_index; never pickle)
    versions/<id>/meta.sqlite    one table of cleaned rows keyed by faiss_id (index/metadata.py)
    versions/<id>/...            extra artifacts (e.g. the lexical index), listed in the manifest
    versions/<id>/manifest.json  written LAST: rows, model, dimension, index type, sha256+size of
                                 every file, sources, parent version, catalog read summary

A writer builds a new version directory, fsyncs every file and the directory, writes the
manifest (temp file, fsync, rename), then switches `current` (temp file, fsync, `os.replace`,
fsync of the root). A crash at any moment leaves either the old `current` or the new one, never
a half version; directories without a manifest are leftovers, removed by the next writer.
Readers verify a version before serving it (`IndexCorruptError` names the file at fault).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.types import CatalogRow

from .metadata import META_FILE, MetadataReader

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VECTORS_FILE = "vectors.faiss"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "current"
LOCK_FILE = "lock"
VERSIONS_DIR = "versions"


# --------------------------------------------------------------------------- errors


class IndexStoreError(RuntimeError):
    """Base of the index store's errors; messages name the file and what to do."""


class IndexMissingError(IndexStoreError, FileNotFoundError):
    """No index (or no such version, or a file of it) exists where one was expected."""


class IndexCorruptError(IndexStoreError):
    """A version failed verification: a file is missing, truncated, altered or inconsistent."""


class IndexLockedError(IndexStoreError):
    """Another writer holds the lock."""


# --------------------------------------------------------------------------- small file helpers


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` so that readers see the old or the new content, never a mix (temp, fsync, replace)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def new_version_id() -> str:
    """Sortable, unique enough for one writer at a time: UTC time to the microsecond."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("v%Y%m%dT%H%M%S") + f"{now.microsecond:06d}Z"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- lock


class WriteLock:
    """An exclusive, non-blocking flock on `<root>/lock`: one writer at a time, fail fast otherwise.

    The kernel drops the lock when the holder dies (even by SIGKILL), so there are no stale locks;
    the pid written into the file only serves the error message.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            try:
                holder = self.path.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise IndexLockedError(
                f"{self.path}: another index writer holds the lock (pid {holder}); wait for that "
                "build/update to finish (or stop it), then run the command again."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: unlinking a lock file lets two writers lock two different inodes.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriteLock:  # noqa: PYI034 - typing.Self needs Python 3.11
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- verification


@dataclass
class VerifyReport:
    """Result of verifying one version."""

    version: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    rows: int | None = None

    def summary(self) -> str:
        head = (f"version {self.version}: {'OK' if self.ok else 'FAILED'} "
                f"({self.files_checked} files, {self.bytes_hashed / 1e6:.1f} MB hashed in {self.seconds:.2f}s"
                + (f", {self.rows} rows" if self.rows is not None else "") + ")")
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


def read_manifest(version_dir: Path) -> dict[str, Any]:
    path = version_dir / MANIFEST_FILE
    if not path.exists():
        raise IndexCorruptError(
            f"{path}: missing; the version is incomplete (an interrupted write?). "
            "Run `rag index rollback` to serve another version or rebuild with `rag index build`."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"{path}: not valid JSON ({exc}); rebuild or roll back the index.") from None
    missing = [k for k in ("version", "rows", "files", "embedding", "index") if k not in manifest]
    if missing or not isinstance(manifest.get("files"), dict):
        raise IndexCorruptError(f"{path}: missing fields {', '.join(missing) or 'files'}; rebuild or roll back the index.")
    return manifest


def check_files(version_dir: Path, manifest: dict[str, Any], *, checksums: bool, report: VerifyReport) -> None:
    """Size of every file listed in the manifest, and its sha256 when `checksums`."""
    for name, entry in sorted(manifest["files"].items()):
        path = version_dir / name
        report.files_checked += 1
        if not path.exists():
            report.problems.append(f"{path}: missing (listed in {MANIFEST_FILE}); restore it, roll back or rebuild")
            continue
        size = path.stat().st_size
        if size != entry.get("size"):
            report.problems.append(
                f"{path}: size {size} bytes, manifest says {entry.get('size')} (truncated or replaced); roll back or rebuild"
            )
            continue
        if checksums:
            digest = sha256_file(path)
            report.bytes_hashed += size
            if digest != entry.get("sha256"):
                report.problems.append(f"{path}: sha256 differs from {MANIFEST_FILE} (the file is altered); roll back or rebuild")


# --------------------------------------------------------------------------- snapshot


class IndexSnapshot:
    """One verified, immutable version: FAISS index + metadata. Safe to share between threads for reads."""

    def __init__(self, path: Path, manifest: dict[str, Any], vector_index: Any, meta: MetadataReader) -> None:
        self.path = path
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.rows: int = int(manifest["rows"])
        self.dimension: int = int(manifest["embedding"]["dimension"])
        self.embedding_model: str = str(manifest["embedding"]["model"])
        self.index = vector_index  # index.vector.FaissIndex
        self._meta = meta
        self.closed = False

    @property
    def artifacts(self) -> list[str]:
        """Extra files of this version (e.g. the lexical index), as listed in the manifest."""
        return list(self.manifest.get("artifacts", []))

    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, faiss ids), shape (n, k); -1 ids where fewer than k rows exist."""
        return self.index.search(vectors, k)

    def get_rows(self, ids: Sequence[int]) -> list[CatalogRow | None]:
        return self._meta.get_rows(ids)

    def get_by_uid(self, uid: str) -> CatalogRow | None:
        return self._meta.get_by_uid(uid)

    def iter_rows(self, batch: int = 10000) -> Iterator[CatalogRow]:
        return self._meta.iter_rows(batch)

    def lexical_search(self, question: str, k: int) -> list[tuple[int, float, str]]:
        """Description-index candidates (index/lexical.py): (faiss_id, score in [0, 1], best passage).

        Opened lazily on the first call and cached per snapshot; [] for a version built without one.
        """
        try:
            from . import lexical
        except ModuleNotFoundError as exc:  # a checkout without the description index
            if exc.name != "index.lexical":
                raise
            return []
        index = lexical.for_snapshot(self)
        return index.search(question, k, get_rows=self.get_rows) if index is not None else []

    def close(self) -> None:
        """Release the SQLite connection. Snapshots handed to other threads are closed by garbage collection instead."""
        if not self.closed:
            self.closed = True
            self._meta.close()

    def __repr__(self) -> str:
        return f"IndexSnapshot(version={self.version!r}, rows={self.rows}, dimension={self.dimension}, type={self.index.type!r})"


def open_version_dir(version_dir: Path, *, mmap: bool = True, checksums: bool = True,
                     search_params: dict[str, Any] | None = None) -> IndexSnapshot:
    """Verify and open one version; raise IndexCorruptError / IndexMissingError naming the file."""
    from .vector import FaissIndex

    if not version_dir.is_dir():
        raise IndexMissingError(
            f"{version_dir}: version directory not found; run `rag index versions` to list versions, "
            "`rag index rollback` to serve another one, or `rag index build`."
        )
    manifest = read_manifest(version_dir)
    report = VerifyReport(version=version_dir.name, ok=True)
    check_files(version_dir, manifest, checksums=checksums, report=report)
    if report.problems:
        raise IndexCorruptError("; ".join(report.problems))
    rows = int(manifest["rows"])
    dimension = int(manifest["embedding"]["dimension"])
    info = manifest["index"]
    vec_path = version_dir / VECTORS_FILE
    try:
        vector_index = FaissIndex.load(vec_path, info["type"], dimension, info.get("params", {}), mmap=mmap)
    except (RuntimeError, ValueError, OSError) as exc:  # FAISS raises RuntimeError on a damaged file
        raise IndexCorruptError(f"{vec_path}: FAISS cannot read it ({str(exc).splitlines()[0] if str(exc) else exc}); roll back or rebuild") from None
    if search_params:
        vector_index.apply_search_params(**search_params)
    if vector_index.ntotal != rows:
        raise IndexCorruptError(f"{vec_path}: holds {vector_index.ntotal} vectors but {MANIFEST_FILE} says {rows} rows; roll back or rebuild")
    meta_path = version_dir / META_FILE
    try:
        meta = MetadataReader(meta_path)
        count = meta.count()
    except sqlite3.Error as exc:  # DatabaseError: "file is not a database", missing table
        raise IndexCorruptError(f"{meta_path}: SQLite cannot read it ({exc}); roll back or rebuild") from None
    if count != rows:
        meta.close()
        raise IndexCorruptError(f"{meta_path}: holds {count} rows but {MANIFEST_FILE} says {rows}; roll back or rebuild")
    return IndexSnapshot(version_dir, manifest, vector_index, meta)


# --------------------------------------------------------------------------- store


class IndexStore:
    """All versions under one root directory, the `current` pointer and the writer lock."""

    def __init__(self, root: str | Path, *, verify_checksums_on_open: bool = True,
                 search_params: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.verify_checksums_on_open = verify_checksums_on_open
        self.search_params = dict(search_params or {})

    @classmethod
    def from_config(cls, config: Any) -> IndexStore:
        """The store of `config.index`, with its open-time settings (checksums, efSearch, nprobe)."""
        ic = config.index
        return cls(ic.path, verify_checksums_on_open=getattr(ic, "verify_checksums_on_open", True),
                   search_params={"hnsw_ef_search": ic.hnsw_ef_search, "ivf_nprobe": ic.ivf_nprobe})

    # ------------------------------------------------------------------ paths

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    @property
    def current_file(self) -> Path:
        return self.root / CURRENT_FILE

    def version_dir(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise IndexMissingError(f"{version!r} is not a version id; run `rag index versions` to list them")
        return self.versions_dir / version

    # ------------------------------------------------------------------ reading

    def current_version(self) -> str | None:
        try:
            text = self.current_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def has_current(self) -> bool:
        version = self.current_version()
        return bool(version) and (self.versions_dir / version / MANIFEST_FILE).exists()

    def complete_versions(self) -> list[str]:
        """Version ids with a manifest (complete), oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).exists())

    def versions(self) -> list[dict[str, Any]]:
        """One dict per complete version, oldest first: version, created, rows, is_current, parent, operation, type, model."""
        current = self.current_version()
        out = []
        for version in self.complete_versions():
            entry: dict[str, Any] = {"version": version, "is_current": version == current}
            try:
                manifest = read_manifest(self.versions_dir / version)
                entry.update(created=manifest.get("created"), rows=manifest.get("rows"),
                             parent=manifest.get("parent"), operation=manifest.get("operation"),
                             type=manifest["index"].get("type"), model=manifest["embedding"].get("model"))
            except IndexCorruptError as exc:
                entry.update(created=None, rows=None, error=str(exc))
            out.append(entry)
        return out

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        version = version or self._require_current()
        return read_manifest(self.version_dir(version))

    def _require_current(self) -> str:
        version = self.current_version()
        if not version:
            raise IndexMissingError(
                f"{self.current_file}: no index yet; build one with `rag index build --data <catalog.jsonl>` "
                f"(index.path is {self.root})"
            )
        return version

    def open_version(self, version: str, *, mmap: bool = True, checksums: bool | None = None) -> IndexSnapshot:
        return open_version_dir(
            self.version_dir(version), mmap=mmap,
            checksums=self.verify_checksums_on_open if checksums is None else checksums,
            search_params=self.search_params,
        )

    def open_current(self, *, mmap: bool = True, checksums: bool | None = None) -> IndexSnapshot:
        """Verify and open the current version (sizes always; sha256 unless verify_checksums_on_open is false)."""
        return self.open_version(self._require_current(), mmap=mmap, checksums=checksums)

    def verify(self, version: str | None = None) -> VerifyReport:
        """Full check of a version: manifest, size + sha256 of every listed file, and matching row counts."""
        version = version or self._require_current()
        started = time.perf_counter()
        report = VerifyReport(version=version, ok=True)
        version_dir = self.version_dir(version)
        try:
            if not version_dir.is_dir():
                raise IndexMissingError(f"{version_dir}: version directory not found")
            manifest = read_manifest(version_dir)
            check_files(version_dir, manifest, checksums=True, report=report)
            if not report.problems:
                # sha256 already done; open without re-hashing to check the counts
                snapshot = open_version_dir(version_dir, mmap=True, checksums=False)
                report.rows = snapshot.rows
                snapshot.close()
        except IndexStoreError as exc:
            report.problems.append(str(exc))
        report.ok = not report.problems
        report.seconds = time.perf_counter() - started
        return report

    # ------------------------------------------------------------------ writing

    def lock(self) -> WriteLock:
        return WriteLock(self.root)

    def cleanup_leftovers(self) -> list[str]:
        """Remove half-written version dirs (no manifest) and stray temp files. Call with the lock held."""
        removed: list[str] = []
        if self.versions_dir.is_dir():
            for p in self.versions_dir.iterdir():
                # no manifest: an interrupted build/update; .deleting-*: an interrupted gc
                if p.is_dir() and (p.name.startswith(".deleting-") or not (p / MANIFEST_FILE).exists()):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        if self.root.is_dir():
            for p in self.root.glob(f".{CURRENT_FILE}.tmp-*"):
                with contextlib.suppress(OSError):
                    p.unlink()
        if removed:
            log.warning("removed %d incomplete version dir(s) left by an interrupted write: %s", len(removed), ", ".join(removed))
        return removed

    def new_version_dir(self) -> Path:
        """A fresh, empty version directory (call with the lock held)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.versions_dir / new_version_id()
            try:
                path.mkdir()
                fsync_dir(self.versions_dir)
                return path
            except FileExistsError:
                time.sleep(0.000001)

    def commit_version(self, version_dir: Path, manifest: dict[str, Any]) -> str:
        """fsync the files and the dir, write manifest.json last, then switch `current`. Lock held."""
        files: dict[str, Any] = {}
        for name in manifest.get("file_names", []):
            path = version_dir / name
            fsync_file(path)
            files[name] = file_entry(path)
        manifest = {k: v for k, v in manifest.items() if k != "file_names"}
        manifest["files"] = files
        manifest.setdefault("format", FORMAT_VERSION)
        manifest["version"] = version_dir.name
        fsync_dir(version_dir)
        atomic_write_text(version_dir / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
        self.switch_current(version_dir.name)
        return version_dir.name

    def switch_current(self, version: str) -> None:
        atomic_write_text(self.current_file, version + "\n")

    def rollback(self, to: str | None = None) -> str:
        """Serve `to` (default: the newest complete version older than the current one); returns its id.

        The target is verified (sha256 included) before the switch, so a rollback never lands on a broken version.
        """
        with self.lock():
            current = self.current_version()
            versions = self.complete_versions()
            if to is None:
                older = [v for v in versions if current is None or v < current]
                if not older:
                    raise IndexMissingError(
                        f"{self.versions_dir}: no version older than {current} to roll back to; "
                        "`rag index versions` lists what exists"
                    )
                to = older[-1]
            elif to not in versions:
                raise IndexMissingError(
                    f"{self.versions_dir / to}: no such complete version; `rag index versions` lists what exists"
                )
            report = self.verify(to)
            if not report.ok:
                raise IndexCorruptError(f"cannot roll back to {to}: " + "; ".join(report.problems))
            self.switch_current(to)
            return to

    def gc(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` complete versions (the current one is always kept) and leftovers."""
        if keep < 1:
            raise ValueError(f"gc --keep: must be >= 1, got {keep}")
        with self.lock():
            return self._gc_locked(keep)

    def _gc_locked(self, keep: int) -> list[str]:
        removed = self.cleanup_leftovers()
        current = self.current_version()
        versions = self.complete_versions()
        kept = set(versions[-keep:]) | ({current} if current else set())
        for version in versions:
            if version not in kept:
                # rename first so a concurrent lister never sees a half-deleted version as complete
                doomed = self.versions_dir / f".deleting-{version}"
                os.replace(self.versions_dir / version, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(version)
        for stale in self.versions_dir.glob(".deleting-*") if self.versions_dir.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
        return removed


# --------------------------------------------------------------------------- hot reload


class LiveIndex:
    """The current version for a long-running process, switched between requests without a restart.

    `snapshot()` checks the `current` pointer at most every `check_interval_s` (one small file read);
    when it names a new version, that version is verified (sha256 of a 2 GB index takes seconds) and
    opened in a background thread (`background_reload=True`, the default) while every caller keeps
    getting the previous snapshot, so no request waits for a reload; with `background_reload=False`
    the caller that noticed does the work (others still get the previous snapshot meanwhile).
    A version that fails verification is logged and skipped: the previous good one keeps serving.
    Snapshots are never closed here, so queries in flight finish on the version they started with;
    an old snapshot is freed when its last user drops it.
    """

    def __init__(self, store: IndexStore, check_interval_s: float = 1.0, *, mmap: bool = True,
                 background_reload: bool = True) -> None:
        self.store = store
        self.background_reload = background_reload
        self.check_interval_s = check_interval_s
        self.mmap = mmap
        self._snapshot: IndexSnapshot | None = None
        self._last_check = 0.0
        self._failed: str | None = None  # version that failed to verify; not retried until `current` changes
        self.last_error: str | None = None
        self._reload_lock = threading.Lock()

    def snapshot(self) -> IndexSnapshot:
        snap = self._snapshot
        if snap is None:
            with self._reload_lock:  # the very first open: everyone waits for it
                if self._snapshot is None:
                    self._snapshot = self.store.open_current(mmap=self.mmap)
                    self._last_check = time.monotonic()
                return self._snapshot
        if time.monotonic() - self._last_check >= self.check_interval_s and self._reload_lock.acquire(blocking=False):
            if self.store.current_version() in (snap.version, self._failed):
                self._last_check = time.monotonic()  # the common case: nothing new, no thread
                self._reload_lock.release()
            elif self.background_reload:
                threading.Thread(target=self._reload_and_release, name="index-reload", daemon=True).start()
            else:
                self._reload_and_release()
        return self._snapshot  # type: ignore[return-value]

    def _reload_and_release(self) -> None:
        try:
            self._maybe_reload()
        except Exception:  # never let a reload error reach a request; keep serving
            log.exception("index reload failed; still serving %s", self._snapshot.version if self._snapshot else None)
        finally:
            self._reload_lock.release()

    def _maybe_reload(self) -> None:
        self._last_check = time.monotonic()
        version = self.store.current_version()
        if not version or version == self._snapshot.version or version == self._failed:  # type: ignore[union-attr]
            return
        try:
            fresh = self.store.open_version(version, mmap=self.mmap)
        except (IndexStoreError, OSError) as exc:
            self._failed = version
            self.last_error = str(exc)
            log.error("index version %s failed verification, still serving %s: %s",
                      version, self._snapshot.version, exc)  # type: ignore[union-attr]
            return
        self._failed = None
        self.last_error = None
        self._snapshot = fresh
        log.info("switched to index version %s (%d rows)", fresh.version, fresh.rows)

    def reload(self) -> IndexSnapshot:
        """Check for a new version now (e.g. right after an admin update)."""
        with self._reload_lock:
            if self._snapshot is None:
                self._snapshot = self.store.open_current(mmap=self.mmap)
            else:
                self._maybe_reload()
            return self._snapshot
