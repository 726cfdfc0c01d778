"""The versioned on-disk index store: versions, manifest, lock, verification, hot reload.

    rag index versions | rag index verify | rag index rollback | rag index gc --keep 3

Layout under `index.path`:

    current                      the id of the version being served (replaced atomically)
    lock                         flock'ed by the one writer; holds the writer's pid
    versions/<id>/vectors.faiss  base segment: FAISS index (faiss.write_index; never pickle)
    versions/<id>/meta.sqlite    base segment: cleaned rows keyed by faiss_id (index/metadata.py)
    versions/<id>/delta.faiss    delta segment (after an update): flat IDMap2 of new/re-embedded vectors
    versions/<id>/delta.sqlite   delta segment: rows upserted since the base was written
    versions/<id>/tombstones.npy sorted int64 faiss ids of base rows deleted or superseded
    versions/<id>/...            extra artifacts (e.g. the lexical index), listed in the manifest
    versions/<id>/manifest.json  written LAST: rows, segments, model, dimension, index type,
                                 size+sha256(+mtime) of every file, sources, parent, read summary
    versions/<id>/.writing       marker of a version still being written (removed at commit)
    quarantine/<id>-<time>       damaged versions (no manifest) moved aside, never deleted
    rejects/<id>.jsonl           rejected lines of a build/update that wrote no version
    uploads/                     admin uploads being processed (api/app.py), flock'ed while in use

Segments: the base files are written by a build or a compaction and never modified; an update
hard-links them into its new version (same inode, zero copy) and writes only a new small delta.
A reader sees base - tombstones + delta (`SegmentedVectors`, `IndexSnapshot`).

A writer builds a new version directory, fsyncs every file and the directory, writes the
manifest (temp file, fsync, rename), then switches `current` (temp file, fsync, `os.replace`,
fsync of the root). A crash at any moment leaves either the old `current` or the new one, never
a half version. A writer names what it may leave behind as temporary (`versions/.new-*`, the
`.writing` marker, `versions/.deleting-*`, `.current.tmp-*`, `rejects/.writing-*`, unlocked
uploads); the next writer removes exactly those. Any other directory without a manifest is a
damaged version: it is moved to `quarantine/`, never deleted, and never while `current` names it.
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
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.types import CatalogRow

from .metadata import DELTA_META_FILE, META_FILE, MetadataReader

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VECTORS_FILE = "vectors.faiss"
DELTA_VECTORS_FILE = "delta.faiss"
TOMBSTONES_FILE = "tombstones.npy"
MANIFEST_FILE = "manifest.json"
COMMIT_THREADS = 8  # files fsynced and hashed at once by commit_version
CURRENT_FILE = "current"
LOCK_FILE = "lock"
VERSIONS_DIR = "versions"
QUARANTINE_DIR = "quarantine"
REJECTS_DIR = "rejects"
UPLOADS_DIR = "uploads"
WRITING_MARKER = ".writing"  # inside a version dir: written by new_version_dir, removed by commit_version
NEW_DIR_PREFIX = ".new-"  # versions/.new-<id>: a version dir before its marker is in place
STAGED_PREFIX = ".writing-"  # rejects/.writing-<id>.jsonl: rejects of a writer still running


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


# (st_dev, st_ino, size, mtime_ns) -> sha256 of files this process has hashed (only files older
# than STABLE_AFTER_NS when hashed). Files of a committed version never change and an update
# hard-links the base files, so a reload after an update finds the base's inodes here and hashes
# only the new delta files (not the 3 GB of a 1.3M-row base).
HashCache = dict[tuple[int, int, int, int], str]


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


# A file's mtime identifies its content only if a later write would get a different mtime. File
# systems stamp writes with a coarse clock (a jiffy, up to 2 s on some), so an mtime is only
# recorded or trusted once the file is older than this when it is hashed.
STABLE_AFTER_NS = 2_000_000_000


def _stable(st: os.stat_result) -> bool:
    return time.time_ns() - st.st_mtime_ns > STABLE_AFTER_NS


def file_entry(path: Path, hash_cache: HashCache | None = None) -> dict[str, Any]:
    """size and sha256, plus the mtime (ns) the file had when it was hashed if it was old enough.

    The mtime lets a later update that hard-links this file into a new version carry the hash
    forward instead of re-reading gigabytes (`carried_entry`); verification never relies on it.
    `hash_cache` (from checking the parent) saves hashing a file already hashed in this process.
    """
    before = path.stat()
    key = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
    digest = hash_cache.get(key) if hash_cache else None
    if digest is None:
        digest = sha256_file(path)
    entry: dict[str, Any] = {"size": before.st_size, "sha256": digest}
    if _stable(before):
        entry["mtime_ns"] = before.st_mtime_ns
    return entry


def is_base_file(name: str) -> bool:
    """Files of a version's base segment: written once by a build/compaction, then only hard-linked."""
    return name in (VECTORS_FILE, META_FILE) or name.startswith("lexical.base.")


def carried_entry(
    path: Path, parent_path: Path, parent_entry: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The parent's manifest entry for `path` when it may be reused without hashing, else None.

    Reused only when `path` is the very same inode as the parent's file (a hard link) and that
    inode still has the size and mtime it had when the parent hashed it. A hash carried forward
    is the hash of the content the parent verified, so damage that happened since is still caught
    by `rag index verify` or the next open with checksums: carrying never launders a bad file.
    """
    if not parent_entry or "mtime_ns" not in parent_entry:
        return None
    try:
        st, pst = path.stat(), parent_path.stat()
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != (pst.st_dev, pst.st_ino):
        return None
    if st.st_size != parent_entry.get("size") or st.st_mtime_ns != parent_entry["mtime_ns"]:
        return None
    return dict(parent_entry)


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
    files_trusted: int = 0  # not re-hashed: same inode/size/mtime as a file already hashed (see check_files)
    bytes_hashed: int = 0
    seconds: float = 0.0
    rows: int | None = None

    def summary(self) -> str:
        head = (
            f"version {self.version}: {'OK' if self.ok else 'FAILED'} "
            f"({self.files_checked} files, {self.bytes_hashed / 1e6:.1f} MB hashed in {self.seconds:.2f}s"
            + (f", {self.rows} rows" if self.rows is not None else "")
            + ")"
        )
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


def read_manifest(version_dir: Path) -> dict[str, Any]:
    path = version_dir / MANIFEST_FILE
    if not path.exists():
        raise IndexCorruptError(
            f"{path}: missing; this version is damaged (its files cannot be checked). Nothing is deleted: "
            "`rag index rollback` serves the newest complete older version, `rag index build --data PATH` "
            f"writes a new one; once `current` names another version, the next index write moves this "
            f"directory to {version_dir.parent.parent / QUARANTINE_DIR}/ for inspection."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"{path}: not valid JSON ({exc}); rebuild or roll back the index.") from None
    missing = [k for k in ("version", "rows", "files", "embedding", "index") if k not in manifest]
    if missing or not isinstance(manifest.get("files"), dict):
        raise IndexCorruptError(
            f"{path}: missing fields {', '.join(missing) or 'files'}; rebuild or roll back the index."
        )
    return manifest


def check_files(
    version_dir: Path,
    manifest: dict[str, Any],
    *,
    checksums: bool,
    report: VerifyReport,
    hash_cache: HashCache | None = None,
    trust_base_stat: bool = False,
) -> None:
    """Size of every file listed in the manifest, and its sha256 when `checksums`.

    `hash_cache`: skip hashing a file whose inode, size and mtime this process already hashed to
    the recorded sha256. `trust_base_stat` (used by an update on its parent only): skip hashing a
    base-segment file whose size and mtime equal those recorded when it was hashed; its recorded
    hash is carried into the new version, so any damage stays detectable there.
    """
    for name, entry in sorted(manifest["files"].items()):
        path = version_dir / name
        report.files_checked += 1
        try:
            st = path.stat()
        except FileNotFoundError:
            report.problems.append(
                f"{path}: missing (listed in {MANIFEST_FILE}); restore it, roll back or rebuild"
            )
            continue
        size = st.st_size
        if size != entry.get("size"):
            report.problems.append(
                f"{path}: size {size} bytes, manifest says {entry.get('size')} (truncated or replaced); roll back or rebuild"
            )
            continue
        if not checksums:
            continue
        key = (st.st_dev, st.st_ino, size, st.st_mtime_ns)
        if trust_base_stat and is_base_file(name) and entry.get("mtime_ns") == st.st_mtime_ns:
            report.files_trusted += 1
            continue
        if hash_cache is not None and hash_cache.get(key) == entry.get("sha256"):
            report.files_trusted += 1
            continue
        digest = sha256_file(path)
        report.bytes_hashed += size
        if digest != entry.get("sha256"):
            report.problems.append(
                f"{path}: sha256 differs from {MANIFEST_FILE} (the file is altered); roll back or rebuild"
            )
        elif hash_cache is not None and _stable(st):
            hash_cache[key] = digest


def segment_counts(manifest: dict[str, Any]) -> tuple[int, dict[str, int] | None]:
    """(base rows, delta counts or None). Versions written before segments existed are all base."""
    segments = manifest.get("segments") or {}
    base_rows = int(segments.get("base", {}).get("rows", manifest["rows"]))
    delta = segments.get("delta")
    return base_rows, ({k: int(delta[k]) for k in ("rows", "vectors", "tombstones")} if delta else None)


# --------------------------------------------------------------------------- snapshot


def _in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask: which `values` occur in the sorted int64 array `sorted_set` (binary search)."""
    if not len(sorted_set):
        return np.zeros(values.shape, dtype=bool)
    pos = np.searchsorted(sorted_set, values)
    pos = np.minimum(pos, len(sorted_set) - 1)
    return sorted_set[pos] == values


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score desc); dropped entries carry id -1 and score -inf and sort last."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    if scores.shape[1] < k:  # pad (fewer candidates than k)
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32), ids.astype(np.int64)


class SegmentedVectors:
    """The vectors of one version: base index minus tombstones, plus the delta index.

    `search` over-fetches from the base (k plus some of the tombstones, doubling while a query
    lost results to tombstones), drops tombstoned ids, searches the small flat delta exactly and
    merges both by score. Tombstones are a sorted int64 array (binary search per candidate).
    Exposes `raw`, `type`, `params` and `apply_search_params` of the base, so tuning efSearch or
    nprobe works as before.
    """

    def __init__(self, base: Any, delta: Any | None = None, tombstones: np.ndarray | None = None) -> None:
        self.base = base
        self.delta = delta
        self.tombstones = np.zeros(0, np.int64) if tombstones is None else np.asarray(tombstones, np.int64)
        self.type: str = base.type
        self.dimension: int = base.dimension

    @property
    def raw(self) -> Any:
        return self.base.raw

    @property
    def params(self) -> dict[str, Any]:
        return self.base.params

    def apply_search_params(self, **overrides: Any) -> None:
        self.base.apply_search_params(**overrides)

    @property
    def ntotal(self) -> int:
        """Live vectors: base - tombstones + delta."""
        return self.base.ntotal - len(self.tombstones) + (self.delta.ntotal if self.delta is not None else 0)

    def _search_base(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n_tomb = len(self.tombstones)
        if not n_tomb:
            return self.base.search(vectors, k)
        base_n = self.base.ntotal
        live = base_n - n_tomb
        want = min(k, live)
        # at most n_tomb results can be tombstoned, so k + n_tomb always suffices; start smaller
        fetch = min(base_n, k + min(n_tomb, max(k, 16)))
        while True:
            scores, ids = self.base.search(vectors, max(1, fetch))
            dead = _in_sorted(ids, self.tombstones)
            scores = np.where(dead, -np.inf, scores)
            ids = np.where(dead, -1, ids)
            got = (ids >= 0).sum(axis=1)
            if fetch >= min(base_n, k + n_tomb) or bool((got >= want).all()):
                return _top_k(scores, ids, k)
            fetch = min(base_n, k + n_tomb, fetch * 2)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), shape (n, k); -1 ids / -inf scores where fewer than k live rows."""
        k = int(k)
        if k <= 0:
            raise ValueError(f"search: k must be > 0, got {k}")
        scores, ids = self._search_base(vectors, k)
        if self.delta is None or self.delta.ntotal == 0:
            return scores, ids
        d_scores, d_ids = self.delta.search(vectors, min(k, self.delta.ntotal))
        return _top_k(np.concatenate([scores, d_scores], axis=1), np.concatenate([ids, d_ids], axis=1), k)


class MappedFiles:
    """The memory-mapped files of one served version, checked before every read of them.

    Reading a mapped page past the end of a file that was truncated in place (`truncate`, a `cp`
    over it, a full disk during a copy) kills the process with SIGBUS, which Python cannot catch.
    So before each search `check()` compares each file's size now (fstat of a descriptor held on
    the very inode that is mapped) with the size it had when verified, and raises
    IndexCorruptError instead: the request fails, the process lives. About 1 µs per file. A
    truncation that lands in the microseconds between the check and the read still kills the
    process; `rag serve` then logs every thread's stack (faulthandler). Small files are not
    mapped at all (`index.mmap_min_bytes`), so damage to them cannot reach a running server.
    """

    def __init__(self) -> None:
        self._files: list[tuple[int, Path, int]] = []
        self._lock = threading.Lock()

    def add(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        with self._lock:
            self._files.append((fd, path, int(size)))

    @property
    def paths(self) -> list[Path]:
        return [path for _fd, path, _size in self._files]

    def check(self) -> None:
        for fd, path, size in self._files:
            try:
                now = os.fstat(fd).st_size
            except OSError:  # closed: the snapshot is being dropped
                continue
            if now < size:
                raise IndexCorruptError(
                    f"{path}: {now} bytes, {size} when this version was opened: the file was truncated while it was "
                    "served (memory-mapped, so it is not read past its end); restore it, `rag index rollback` or "
                    "rebuild; `rag index verify` checks every version"
                )

    def close(self) -> None:
        with self._lock:
            files, self._files = self._files, []
        for fd, _path, _size in files:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()


class IndexSnapshot:
    """One verified, immutable version: vectors + metadata. Safe to share between threads for reads.

    Rows resolve delta first (upserted since the base), then base unless tombstoned.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        vector_index: Any,
        meta: MetadataReader,
        delta_meta: MetadataReader | None = None,
        *,
        mapped: MappedFiles | None = None,
        mmap: bool = False,
        mmap_min_bytes: int = 0,
    ) -> None:
        self.path = path
        self.mapped = mapped if mapped is not None else MappedFiles()
        self._mmap, self._mmap_min_bytes = mmap, int(mmap_min_bytes)
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.rows: int = int(manifest["rows"])
        self.dimension: int = int(manifest["embedding"]["dimension"])
        self.embedding_model: str = str(manifest["embedding"]["model"])
        self.index = vector_index  # SegmentedVectors (or a bare index.vector.FaissIndex)
        self._meta = meta
        self._delta_meta = delta_meta
        tomb = getattr(vector_index, "tombstones", None)
        self._tombstones: np.ndarray = np.zeros(0, np.int64) if tomb is None else tomb
        # base rows overridden by a delta row (sorted): skipped when iterating the base
        self._delta_ids: np.ndarray = (
            delta_meta.all_ids() if delta_meta is not None else np.zeros(0, np.int64)
        )
        self.closed = False

    @property
    def artifacts(self) -> list[str]:
        """Extra files of this version (e.g. the lexical index), as listed in the manifest."""
        return list(self.manifest.get("artifacts", []))

    @property
    def meta_path(self) -> Path:
        """The base segment's SQLite file (rows upserted since the base live in delta.sqlite)."""
        return self.path / META_FILE

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, faiss ids), shape (n, k); -1 ids where fewer than k rows exist."""
        self.mapped.check()
        return self.index.search(vectors, k)

    def check_mapped(self) -> None:
        """Raise IndexCorruptError when a memory-mapped file of this version shrank since it was opened."""
        self.mapped.check()

    def should_map(self, names: Sequence[str]) -> bool:
        """Memory-map these files of the version (index.mmap and together >= index.mmap_min_bytes)?"""
        files = self.manifest.get("files", {})
        return self._mmap and sum(int(files.get(n, {}).get("size", 0)) for n in names) >= self._mmap_min_bytes

    def watch_mapped(self, names: Sequence[str]) -> None:
        """Check these memory-mapped files of the version before each read (MappedFiles)."""
        files = self.manifest.get("files", {})
        for name in names:
            if name in files:
                self.mapped.add(self.path / name, int(files[name]["size"]))

    def disk_problems(self) -> list[str]:
        """Files of this version whose size on disk is no longer the manifest's (a cheap stat, no hashing)."""
        problems = []
        for name, entry in sorted(self.manifest.get("files", {}).items()):
            try:
                size = (self.path / name).stat().st_size
            except OSError as exc:
                problems.append(f"{self.path / name}: {exc.strerror}")
                continue
            if size != entry.get("size"):
                problems.append(
                    f"{self.path / name}: size {size} bytes on disk, manifest says {entry.get('size')}"
                )
        return problems

    def get_rows(self, ids: Sequence[int]) -> list[CatalogRow | None]:
        if self._delta_meta is None:
            return self._meta.get_rows(ids)
        out = self._delta_meta.get_rows(ids)
        missing = [
            i for i, (fid, row) in enumerate(zip(ids, out, strict=True)) if row is None and int(fid) >= 0
        ]
        if missing:
            wanted = np.array([int(ids[i]) for i in missing], dtype=np.int64)
            alive = ~_in_sorted(wanted, self._tombstones)
            positions = [i for i, ok in zip(missing, alive, strict=True) if ok]
            for i, row in zip(positions, self._meta.get_rows([int(ids[i]) for i in positions]), strict=True):
                out[i] = row
        return out

    def get_by_uid(self, uid: str) -> CatalogRow | None:
        if self._delta_meta is not None:
            found = self._delta_meta.lookup_uid(uid)
            if found is not None:
                return found[1]
        found = self._meta.lookup_uid(uid)
        if found is None or (
            len(self._tombstones) and bool(_in_sorted(np.array([found[0]]), self._tombstones)[0])
        ):
            return None
        return found[1]

    def iter_rows(self, batch: int = 10000) -> Iterator[CatalogRow]:
        """Every live row, ascending faiss_id (base minus tombstones and overrides, merged with the delta)."""
        if self._delta_meta is None:
            yield from self._meta.iter_rows(batch)
            return
        import heapq

        # a set: one hash lookup per base row (the delta and tombstones are small next to the base)
        hidden = set(self._tombstones.tolist()) | set(self._delta_ids.tolist())

        def base() -> Iterator[tuple[int, CatalogRow]]:
            for faiss_id, row in self._meta.iter_rows_with_ids(batch):
                if faiss_id not in hidden:
                    yield faiss_id, row

        for _faiss_id, row in heapq.merge(
            base(), self._delta_meta.iter_rows_with_ids(batch), key=lambda t: t[0]
        ):
            yield row

    def lexical_search(self, question: str, k: int, *, snippets: bool = True) -> list[tuple[int, float, str]]:
        """Description-index candidates (index/lexical.py): (faiss_id, score in [0, 1], best passage).

        Opened lazily on the first call and cached per snapshot; [] for a version built without one.
        `snippets=False`: every passage is "" (no row fetch): the caller picks the passages of the rows
        it keeps with `lexical_snippets`, the same text.
        """
        try:
            from . import lexical
        except ModuleNotFoundError as exc:  # a checkout without the description index
            if exc.name != "index.lexical":
                raise
            return []
        index = lexical.for_snapshot(self)
        if index is None:
            return []
        self.mapped.check()
        if not snippets:
            return index.search(question, k, snippets=0)
        return index.search(question, k, get_rows=self.get_rows)

    def lexical_snippets(self, question: str, rows: Sequence[CatalogRow | None]) -> list[str]:
        """The passage of each row's description that best matches the question ("" for None or no
        description): what `lexical_search` puts in its first `lexical.SNIPPET_ROWS` results."""
        from . import lexical

        terms = set(lexical.query_terms(question))
        return [
            lexical.best_passage(row.content, terms) if row is not None and row.content else ""
            for row in rows
        ]

    def close(self) -> None:
        """Release the SQLite connections. Snapshots handed to other threads are closed by garbage collection instead."""
        if not self.closed:
            self.closed = True
            self.mapped.close()
            self._meta.close()
            if self._delta_meta is not None:
                self._delta_meta.close()

    def __repr__(self) -> str:
        return f"IndexSnapshot(version={self.version!r}, rows={self.rows}, dimension={self.dimension}, type={self.index.type!r})"


def _open_meta(path: Path, expected: int) -> MetadataReader:
    try:
        meta = MetadataReader(path)
        count = meta.count()
    except sqlite3.Error as exc:  # DatabaseError: "file is not a database", missing table
        raise IndexCorruptError(f"{path}: SQLite cannot read it ({exc}); roll back or rebuild") from None
    if count != expected:
        meta.close()
        raise IndexCorruptError(
            f"{path}: holds {count} rows but {MANIFEST_FILE} says {expected}; roll back or rebuild"
        )
    return meta


def _load_vectors(
    path: Path,
    index_type: str,
    dimension: int,
    params: dict[str, Any],
    *,
    mmap: bool,
    expected: int,
    what: str = "vectors",
) -> Any:
    from .vector import FaissIndex

    try:
        index = FaissIndex.load(path, index_type, dimension, params, mmap=mmap)
    except (RuntimeError, ValueError, OSError) as exc:  # FAISS raises RuntimeError on a damaged file
        raise IndexCorruptError(
            f"{path}: FAISS cannot read it ({str(exc).splitlines()[0] if str(exc) else exc}); roll back or rebuild"
        ) from None
    if index.ntotal != expected:
        raise IndexCorruptError(
            f"{path}: holds {index.ntotal} {what} but {MANIFEST_FILE} says {expected} rows; roll back or rebuild"
        )
    return index


def load_tombstones(path: Path, expected: int) -> np.ndarray:
    """tombstones.npy: sorted, unique int64 faiss ids; refuses anything else (never unpickles)."""
    try:
        tomb = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexCorruptError(f"{path}: not a readable .npy file ({exc}); roll back or rebuild") from None
    if tomb.dtype != np.int64 or tomb.ndim != 1 or (len(tomb) > 1 and not bool((np.diff(tomb) > 0).all())):
        raise IndexCorruptError(
            f"{path}: expected a sorted, unique int64 array, got {tomb.dtype} {tomb.shape}; roll back or rebuild"
        )
    if len(tomb) != expected:
        raise IndexCorruptError(
            f"{path}: holds {len(tomb)} tombstones but {MANIFEST_FILE} says {expected}; roll back or rebuild"
        )
    return tomb


def open_version_dir(
    version_dir: Path,
    *,
    mmap: bool = True,
    checksums: bool = True,
    search_params: dict[str, Any] | None = None,
    hash_cache: HashCache | None = None,
    base_cache: dict[Any, Any] | None = None,
    load_base: bool = True,
    mmap_min_bytes: int = 0,
) -> IndexSnapshot | None:
    """Verify and open one version; raise IndexCorruptError / IndexMissingError naming the file.

    Checks: every listed file's size (and sha256 when `checksums`), base FAISS == base SQLite ==
    manifest base rows, delta FAISS / delta SQLite / tombstones == the manifest's delta counts,
    and rows == base rows - tombstones + delta vectors.

    `base_cache`: a loaded base FAISS index is reused for another version whose base file is the
    same inode (size, mtime, type and search params equal): versions written by updates share
    their base, and loading a 1.3M-row flat base costs seconds (FAISS rebuilds the IDMap2 reverse
    map). The index is only searched, which FAISS allows from many threads.
    `load_base=False` checks the files and the delta only and returns None (an update's parent
    check: the base is hard-linked, its counts were checked when it was written and by `verify`).
    `mmap`: memory-map the base FAISS file (and later the description index) when it is at least
    `mmap_min_bytes`; smaller files are read into memory. Mapped files are watched (`MappedFiles`).
    """
    if not version_dir.is_dir():
        raise IndexMissingError(
            f"{version_dir}: version directory not found; run `rag index versions` to list versions, "
            "`rag index rollback` to serve another one, or `rag index build`."
        )
    manifest = read_manifest(version_dir)
    report = VerifyReport(version=version_dir.name, ok=True)
    check_files(version_dir, manifest, checksums=checksums, report=report, hash_cache=hash_cache)
    if report.problems:
        raise IndexCorruptError("; ".join(report.problems))
    rows = int(manifest["rows"])
    base_rows, delta = segment_counts(manifest)
    dimension = int(manifest["embedding"]["dimension"])
    mapped = MappedFiles()
    base = (
        _load_base(version_dir, manifest, base_rows, mapped, mmap, mmap_min_bytes, search_params, base_cache)
        if load_base
        else None
    )
    delta_index = delta_meta = None
    tomb = None
    if delta is not None:
        if base_rows - delta["tombstones"] + delta["vectors"] != rows:
            raise IndexCorruptError(
                f"{version_dir / MANIFEST_FILE}: rows {rows} != base {base_rows} - tombstones {delta['tombstones']} "
                f"+ delta vectors {delta['vectors']}; roll back or rebuild"
            )
        tomb = load_tombstones(version_dir / TOMBSTONES_FILE, delta["tombstones"])
        delta_index = _load_vectors(
            version_dir / DELTA_VECTORS_FILE,
            "flat",
            dimension,
            {},
            mmap=False,
            expected=delta["vectors"],
            what="delta vectors",
        )
    elif base_rows != rows:
        raise IndexCorruptError(
            f"{version_dir / MANIFEST_FILE}: rows {rows} but base segment {base_rows} and no delta; roll back or rebuild"
        )
    if not load_base:
        if delta is not None:
            _open_meta(version_dir / DELTA_META_FILE, delta["rows"]).close()
        return None
    meta = _open_meta(version_dir / META_FILE, base_rows)
    if delta is not None:
        try:
            delta_meta = _open_meta(version_dir / DELTA_META_FILE, delta["rows"])
        except IndexCorruptError:
            meta.close()
            raise
    assert base is not None
    vectors = SegmentedVectors(base, delta_index, tomb)
    snapshot = IndexSnapshot(
        version_dir,
        manifest,
        vectors,
        meta,
        delta_meta,
        mapped=mapped,
        mmap=mmap,
        mmap_min_bytes=mmap_min_bytes,
    )
    # a file truncated between the size check above and the mapping: refuse now rather than SIGBUS later
    snapshot.check_mapped()
    return snapshot


def _load_base(
    version_dir: Path,
    manifest: dict[str, Any],
    base_rows: int,
    mapped: MappedFiles,
    mmap: bool,
    mmap_min_bytes: int,
    search_params: dict[str, Any] | None,
    base_cache: dict[Any, Any] | None,
) -> Any:
    """The base FAISS index of a version (open_version_dir), from `base_cache` when the same file is there."""
    info = manifest["index"]
    dimension = int(manifest["embedding"]["dimension"])
    vec_path = version_dir / VECTORS_FILE
    st = vec_path.stat()
    mmap_base = mmap and st.st_size >= mmap_min_bytes
    if mmap_base:
        mapped.add(vec_path, st.st_size)
    key = (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        info["type"],
        mmap_base,
        base_rows,
        json.dumps(search_params or {}, sort_keys=True),
    )
    base = base_cache.get(key) if base_cache is not None else None
    if base is None:
        base = _load_vectors(
            vec_path, info["type"], dimension, info.get("params", {}), mmap=mmap_base, expected=base_rows
        )
        if search_params:
            base.apply_search_params(**search_params)
        if base_cache is not None:
            base_cache.clear()  # one base at a time: the newest
            base_cache[key] = base
    return base


def _check_root(root: Path) -> None:
    """index.path must be a directory, or not exist yet below a directory (it is then created)."""
    for path in (root, *root.parents):
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a file further up; found there
            continue
        except OSError as exc:
            raise IndexStoreError(
                f"{path}: cannot use it for index.path={str(root)!r} ({exc.strerror})"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            what = "is" if path == root else "is above it and"
            raise IndexStoreError(
                f"index.path={str(root)!r}: {path} {what} a file, not a directory; set index.path "
                "to a directory (`--set index.path=DIR`; it is created when missing)"
            )
        return


# --------------------------------------------------------------------------- store


class IndexStore:
    """All versions under one root directory, the `current` pointer and the writer lock."""

    def __init__(
        self,
        root: str | Path,
        *,
        verify_checksums_on_open: bool = True,
        search_params: dict[str, Any] | None = None,
        mmap_min_bytes: int = 0,
    ) -> None:
        self.root = Path(root)
        _check_root(self.root)
        self.verify_checksums_on_open = verify_checksums_on_open
        self.mmap_min_bytes = int(
            mmap_min_bytes
        )  # smaller FAISS / description-index files are read, not mapped
        self.search_params = dict(search_params or {})
        # files this store object already hashed on open (see HashCache): a reload after an update
        # hashes only the new delta files, the hard-linked base is recognised by inode + mtime
        self.hash_cache: HashCache = {}
        self._hash_cache_lock = threading.Lock()
        self._base_cache: dict[Any, Any] = {}  # see open_version_dir

    @classmethod
    def from_config(cls, config: Any) -> IndexStore:
        """The store of `config.index`, with its open-time settings (checksums, efSearch, nprobe)."""
        ic = config.index
        return cls(
            ic.path,
            verify_checksums_on_open=getattr(ic, "verify_checksums_on_open", True),
            search_params={"hnsw_ef_search": ic.hnsw_ef_search, "ivf_nprobe": ic.ivf_nprobe},
            mmap_min_bytes=int(getattr(ic, "mmap_min_bytes", 0)),
        )

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
        if not version:
            return False
        return (self.versions_dir / version / MANIFEST_FILE).exists()

    def complete_versions(self) -> list[str]:
        """Version ids with a manifest (complete), oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.versions_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).exists()
        )

    def versions(self) -> list[dict[str, Any]]:
        """One dict per complete version, oldest first: version, created, rows, is_current, parent, operation, type, model."""
        current = self.current_version()
        out = []
        for version in self.complete_versions():
            entry: dict[str, Any] = {"version": version, "is_current": version == current}
            try:
                manifest = read_manifest(self.versions_dir / version)
                entry.update(
                    created=manifest.get("created"),
                    rows=manifest.get("rows"),
                    parent=manifest.get("parent"),
                    operation=manifest.get("operation"),
                    type=manifest["index"].get("type"),
                    model=manifest["embedding"].get("model"),
                )
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

    def open_version(
        self, version: str, *, mmap: bool = True, checksums: bool | None = None
    ) -> IndexSnapshot:
        with self._hash_cache_lock:
            cache = dict(self.hash_cache)
            base_cache = dict(self._base_cache)
        snapshot = open_version_dir(
            self.version_dir(version),
            mmap=mmap,
            checksums=self.verify_checksums_on_open if checksums is None else checksums,
            search_params=self.search_params,
            hash_cache=cache,
            base_cache=base_cache,
            mmap_min_bytes=self.mmap_min_bytes,
        )
        assert snapshot is not None
        with self._hash_cache_lock:
            self.hash_cache.update(cache)
            self._base_cache = base_cache
        return snapshot

    def remember_hashes(self, hashes: HashCache) -> None:
        """Add files another check in this process hashed (e.g. an update's check of its parent).

        The server and `bench_vs_langchain.py` update through the serving store, so the reload after
        the update does not hash the hard-linked base again (tens of MB at 20k rows, GB at 1.3M)."""
        with self._hash_cache_lock:
            self.hash_cache.update(hashes)

    def open_current(self, *, mmap: bool = True, checksums: bool | None = None) -> IndexSnapshot:
        """Verify and open the current version (sizes always; sha256 unless verify_checksums_on_open is false)."""
        return self.open_version(self._require_current(), mmap=mmap, checksums=checksums)

    def verify(
        self,
        version: str | None = None,
        *,
        trust_base_stat: bool = False,
        hash_cache: HashCache | None = None,
        base_counts: bool = True,
    ) -> VerifyReport:
        """Full check of a version: manifest, size + sha256 of every listed file, and matching row counts.

        `trust_base_stat` (an update checking its parent): base-segment files whose size and mtime
        match the manifest's record are not re-hashed (their recorded hash is carried forward).
        `hash_cache` collects what was hashed, for `commit_version` of the new version.
        `base_counts=False` (same caller) skips loading the base to count it (seconds at 1.3M rows).
        """
        version = version or self._require_current()
        started = time.perf_counter()
        report = VerifyReport(version=version, ok=True)
        version_dir = self.version_dir(version)
        try:
            if not version_dir.is_dir():
                raise IndexMissingError(f"{version_dir}: version directory not found")
            manifest = read_manifest(version_dir)
            check_files(
                version_dir,
                manifest,
                checksums=True,
                report=report,
                trust_base_stat=trust_base_stat,
                hash_cache=hash_cache,
            )
            if not report.problems:
                # sha256 already done; open without re-hashing to check the counts
                snapshot = open_version_dir(version_dir, mmap=True, checksums=False, load_base=base_counts)
                report.rows = int(manifest["rows"])
                if snapshot is not None:
                    snapshot.close()
        except IndexStoreError as exc:
            report.problems.append(str(exc))
        report.ok = not report.problems
        report.seconds = time.perf_counter() - started
        return report

    # ------------------------------------------------------------------ writing

    def lock(self) -> WriteLock:
        return WriteLock(self.root)

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE_DIR

    @property
    def rejects_dir(self) -> Path:
        return self.root / REJECTS_DIR

    @property
    def uploads_dir(self) -> Path:
        return self.root / UPLOADS_DIR

    def cleanup_leftovers(self) -> list[str]:
        """Remove what interrupted writers left behind; never delete a version. Call with the lock held.

        Removed (things a writer itself names as temporary): `versions/.new-*` and version dirs
        that still carry the `.writing` marker and have no manifest (a build/update/compact killed
        before its commit), `versions/.deleting-*` (an interrupted gc), `.current.tmp-*`,
        `rejects/.writing-*` and uploads no live process holds (`upload_file`). Any other version
        dir without a manifest is damaged (not a leftover): it is moved to `quarantine/` unless
        `current` names it, in which case it stays where it is (`verify` and `open` report it).
        Returns the names of the removed version dirs.
        """
        removed: list[str] = []
        current = self.current_version()
        if self.versions_dir.is_dir():
            for p in sorted(self.versions_dir.iterdir()):
                if not p.is_dir():
                    continue
                if (p / MANIFEST_FILE).exists():
                    with contextlib.suppress(
                        FileNotFoundError
                    ):  # committed, then killed before the marker went
                        (p / WRITING_MARKER).unlink()
                elif p.name == current:
                    continue  # never touched: `verify` and opening it say what to do
                elif p.name.startswith((".deleting-", NEW_DIR_PREFIX)) or (p / WRITING_MARKER).exists():
                    shutil.rmtree(p, ignore_errors=True)  # named or marked as temporary by its writer
                    removed.append(p.name)
                elif not p.name.startswith("."):
                    self.quarantine(p.name)
        if self.root.is_dir():
            for p in self.root.glob(f".{CURRENT_FILE}.tmp-*"):
                with contextlib.suppress(OSError):
                    p.unlink()
        if self.rejects_dir.is_dir():
            for p in self.rejects_dir.glob(f"{STAGED_PREFIX}*"):
                with contextlib.suppress(OSError):
                    p.unlink()
        self._remove_abandoned_uploads()
        if removed:
            log.warning(
                "removed %d incomplete version dir(s) left by an interrupted write: %s",
                len(removed),
                ", ".join(removed),
            )
        return removed

    def quarantine(self, version: str) -> Path:
        """Move versions/<version> to quarantine/<version>-<UTC time> (a rename: readers keep their open files)."""
        if version == self.current_version():
            raise IndexStoreError(f"{self.version_dir(version)}: is the current version; it is never moved")
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.quarantine_dir / f"{version}-{stamp}"
        os.replace(self.version_dir(version), target)
        fsync_dir(self.versions_dir)
        log.warning(
            "%s: no %s, so it is damaged; moved it to %s (nothing was deleted; inspect it, then remove it "
            "yourself)",
            self.version_dir(version),
            MANIFEST_FILE,
            target,
        )
        return target

    @contextlib.contextmanager
    def upload_file(self, suffix: str = ".jsonl") -> Iterator[Path]:
        """A private file under `<root>/uploads/` for an upload being processed; removed when the block ends.

        The file is flock'ed (shared) while the block runs; the kernel drops the lock when the
        process dies (even by SIGKILL), and `cleanup_leftovers` (every writer) removes the upload
        files no process holds, so a killed server leaves nothing behind for long.
        """
        import tempfile

        self.uploads_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=self.uploads_dir)
        path = Path(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)

    def _remove_abandoned_uploads(self) -> None:
        if not self.uploads_dir.is_dir():
            return
        for p in self.uploads_dir.iterdir():
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live process still uses it
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
                log.warning("removed %s: an upload left by a process that stopped", p)
            finally:
                os.close(fd)

    def new_version_dir(self) -> Path:
        """A fresh version directory holding only the `.writing` marker (call with the lock held).

        The marker is put in place before the directory gets its final name (mkdir `.new-<id>`,
        marker, rename), so a directory without a manifest and without the marker was never an
        unfinished write of this code: `cleanup_leftovers` quarantines it instead of deleting it.
        """
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        while True:
            version = new_version_id()
            path = self.versions_dir / version
            staging = self.versions_dir / f"{NEW_DIR_PREFIX}{version}"
            if path.exists():
                time.sleep(0.000001)
                continue
            staging.mkdir()
            with open(staging / WRITING_MARKER, "w", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()}\n")
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(staging)
            try:
                os.rename(staging, path)  # one writer (the lock), and `path` was checked just above
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            fsync_dir(self.versions_dir)
            return path

    def commit_version(
        self,
        version_dir: Path,
        manifest: dict[str, Any],
        *,
        parent_dir: Path | None = None,
        parent_manifest: dict[str, Any] | None = None,
        hash_cache: HashCache | None = None,
    ) -> str:
        """fsync the files and the dir, write manifest.json last, then switch `current`. Lock held.

        Files hard-linked from the parent keep the parent's size + sha256 entry (`carried_entry`:
        same inode, same size and mtime as when hashed); every other file is hashed.
        """
        parent_files = (parent_manifest or {}).get("files", {})

        def entry_of(name: str) -> dict[str, Any]:
            path = version_dir / name
            fsync_file(path)
            entry = (
                carried_entry(path, parent_dir / name, parent_files.get(name))
                if parent_dir is not None
                else None
            )
            return entry if entry is not None else file_entry(path, hash_cache)

        # files in parallel: hashlib and fsync release the GIL, and a build's few large files
        # (vectors, metadata, the BM25 arrays) would otherwise be hashed one after another
        names = list(manifest.get("file_names", []))
        with ThreadPoolExecutor(max(1, min(len(names), COMMIT_THREADS))) as pool:
            files: dict[str, Any] = dict(zip(names, pool.map(entry_of, names), strict=True))
        manifest = {k: v for k, v in manifest.items() if k != "file_names"}
        manifest["files"] = files
        manifest.setdefault("format", FORMAT_VERSION)
        manifest["version"] = version_dir.name
        fsync_dir(version_dir)
        atomic_write_text(
            version_dir / MANIFEST_FILE,
            json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
        )
        with contextlib.suppress(FileNotFoundError):
            (version_dir / WRITING_MARKER).unlink()  # complete now: the manifest is what counts
        fsync_dir(version_dir)
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

    Damage to the served version itself: a memory-mapped file that shrank (`MappedFiles`) makes
    `snapshot()` raise IndexCorruptError (logged once), so requests fail instead of the process,
    until `current` names a version that verifies (`rag index rollback`, a rebuild) or the file is
    restored. Files read into memory keep serving from memory; a file whose size on disk changed
    is reported in `last_error` (checked with `current`, one stat per file).
    """

    def __init__(
        self,
        store: IndexStore,
        check_interval_s: float = 1.0,
        *,
        mmap: bool = True,
        background_reload: bool = True,
    ) -> None:
        self.store = store
        self.background_reload = background_reload
        self.check_interval_s = check_interval_s
        self.mmap = mmap
        self._snapshot: IndexSnapshot | None = None
        self._last_check = 0.0
        self._failed: str | None = None  # version that failed to verify; not retried until `current` changes
        self._reload_error: str | None = None
        self._disk_error: str | None = None  # files of the served version that changed on disk
        self._damaged: str | None = None  # a mapped file of the served version shrank (logged once)
        self._reload_lock = threading.Lock()

    @property
    def last_error(self) -> str | None:
        """Why the served version is not the newest or not intact (None when all is well)."""
        return self._damaged or self._reload_error or self._disk_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._reload_error = value

    def _check_served(self, snap: IndexSnapshot) -> IndexSnapshot:
        try:
            snap.check_mapped()
        except IndexCorruptError as exc:
            if self._damaged != str(exc):
                log.error(
                    "the served index version %s is damaged; requests get this error until `current` names "
                    "a version that verifies or the file is restored: %s",
                    snap.version,
                    exc,
                )
                self._damaged = str(exc)
            raise
        if self._damaged is not None:
            log.warning("index version %s is intact again", snap.version)
            self._damaged = None
        return snap

    def _check_disk(self, snap: IndexSnapshot) -> None:
        problems = snap.disk_problems()
        text = (
            (
                "files of the served version changed on disk (still serving what was loaded; `rag index verify`): "
                + "; ".join(problems)
            )
            if problems
            else None
        )
        if text and text != self._disk_error:
            log.error("index version %s: %s", snap.version, text)
        self._disk_error = text

    def snapshot(self) -> IndexSnapshot:
        snap = self._snapshot
        if snap is None:
            with self._reload_lock:  # the very first open: everyone waits for it
                if self._snapshot is None:
                    self._snapshot = self.store.open_current(mmap=self.mmap)
                    self._last_check = time.monotonic()
                return self._snapshot
        if time.monotonic() - self._last_check >= self.check_interval_s and self._reload_lock.acquire(
            blocking=False
        ):
            if self.store.current_version() in (snap.version, self._failed):
                self._last_check = time.monotonic()  # the common case: nothing new, no thread
                try:
                    self._check_disk(snap)
                finally:
                    self._reload_lock.release()
            elif self.background_reload:
                threading.Thread(target=self._reload_and_release, name="index-reload", daemon=True).start()
            else:
                self._reload_and_release()
        # a reload may have switched self._snapshot meanwhile (it is never set back to None)
        return self._check_served(self._snapshot if self._snapshot is not None else snap)

    def _reload_and_release(self) -> None:
        try:
            self._maybe_reload()
        except Exception:  # never let a reload error reach a request; keep serving
            log.exception(
                "index reload failed; still serving %s", self._snapshot.version if self._snapshot else None
            )
        finally:
            self._reload_lock.release()

    def _maybe_reload(self) -> None:
        """Switch to the store's current version if it is new (called once a snapshot is served)."""
        self._last_check = time.monotonic()
        served = self._snapshot
        assert served is not None, "_maybe_reload before the first snapshot was opened"
        version = self.store.current_version()
        if not version or version == served.version or version == self._failed:
            return
        try:
            fresh = self.store.open_version(version, mmap=self.mmap)
        except (IndexStoreError, OSError) as exc:
            self._failed = version
            self.last_error = str(exc)
            log.error(
                "index version %s failed verification, still serving %s: %s",
                version,
                served.version,
                exc,
            )
            return
        self._failed = None
        self.last_error = None
        self._disk_error = None
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
