"""The row metadata of one index version: a single SQLite table next to the FAISS file.

    sqlite3 data/index/versions/<version>/meta.sqlite "select count(*) from rows"

    rows(faiss_id INTEGER PRIMARY KEY, uid TEXT UNIQUE, title, content, content_hash, source, line)

`faiss_id` is the id the vector carries in FAISS (`index.vector.uid_to_id`), so a search result
maps to its row with one primary-key lookup. Rows are stored cleaned (as the catalog reader
returns them). `content_hash` lets `rag index update` skip rows that did not change.

The same schema serves both segments of a version (docs/index.md, "Segments"): `meta.sqlite`
holds the base rows, `delta.sqlite` the rows upserted since the base was written.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.types import CatalogRow

META_FILE = "meta.sqlite"
DELTA_META_FILE = "delta.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    faiss_id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    content TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    source TEXT,
    line INTEGER
)
"""
_COLUMNS = "faiss_id, uid, title, content, content_hash, source, line"
_CHUNK = 900  # stay below SQLite's bound-parameter limit on old builds (999)


def content_hash(title: str, content: str) -> str:
    """Hash of the cleaned title and content: an unchanged hash means nothing to re-embed or rewrite."""
    h = hashlib.blake2b(digest_size=16)
    h.update(title.encode("utf-8"))
    h.update(b"\x1f")
    h.update(content.encode("utf-8"))
    return h.hexdigest()


def open_for_writing(path: Path) -> sqlite3.Connection:
    """A connection for the single writer; durability comes from our own fsync before the manifest."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    # Journal in memory (savepoints must roll back on an id collision) and no syncs: a crash
    # mid-write leaves a version dir without manifest, which is discarded anyway; the committer
    # fsyncs the finished file before writing the manifest.
    conn.execute("PRAGMA journal_mode=MEMORY")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(SCHEMA)
    return conn


def insert_rows(conn: sqlite3.Connection, records: Iterable[tuple]) -> None:
    """records: (faiss_id, uid, title, content, content_hash, source, line); replaces rows of the same uid."""
    conn.executemany(f"INSERT OR REPLACE INTO rows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", records)


def _row(record: tuple) -> CatalogRow:
    return CatalogRow(uid=record[1], title=record[2], content=record[3], source=record[5], line=record[6])


class MetadataReader:
    """Read-only access to a version's meta.sqlite, shareable between threads.

    The file is opened with `immutable=1` (a committed version never changes), so SQLite takes no
    locks and creates no journal; the connection is opened eagerly, which keeps the data readable
    even if `rag index gc` unlinks the directory while a query is still running on this version.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        uri = f"file:{path.as_posix()}?mode=ro&immutable=1"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._lock = threading.Lock()  # one cursor at a time on the shared connection
        self._conn.execute("SELECT count(*) FROM rows").fetchone()  # fail now on a broken file

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM rows").fetchone()[0])

    def get_rows(self, ids: Sequence[int]) -> list[CatalogRow | None]:
        wanted = [int(i) for i in ids if int(i) >= 0]
        found: dict[int, CatalogRow] = {}
        for start in range(0, len(wanted), _CHUNK):
            part = wanted[start : start + _CHUNK]
            marks = ",".join("?" * len(part))
            with self._lock:
                records = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM rows WHERE faiss_id IN ({marks})", part
                ).fetchall()
            for record in records:
                found[int(record[0])] = _row(record)
        return [found.get(int(i)) for i in ids]

    def get_by_uid(self, uid: str) -> CatalogRow | None:
        found = self.lookup_uid(uid)
        return found[1] if found else None

    def lookup_uid(self, uid: str) -> tuple[int, CatalogRow] | None:
        """(faiss_id, row) of a uid, or None."""
        with self._lock:
            record = self._conn.execute(f"SELECT {_COLUMNS} FROM rows WHERE uid = ?", (uid,)).fetchone()
        return (int(record[0]), _row(record)) if record else None

    def lookup_uids(self, uids: Sequence[str]) -> dict[str, tuple[int, str, str]]:
        """uid -> (faiss_id, title, content_hash) for the uids present (one indexed query per 900 uids)."""
        out: dict[str, tuple[int, str, str]] = {}
        uids = list(uids)
        for start in range(0, len(uids), _CHUNK):
            part = uids[start : start + _CHUNK]
            with self._lock:
                records = self._conn.execute(
                    f"SELECT faiss_id, uid, title, content_hash FROM rows WHERE uid IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
            for faiss_id, uid, title, chash in records:
                out[uid] = (int(faiss_id), title, chash)
        return out

    def present_ids(self, ids: Sequence[int]) -> set[int]:
        """The subset of `ids` that have a row here."""
        out: set[int] = set()
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), _CHUNK):
            part = ids[start : start + _CHUNK]
            with self._lock:
                out.update(
                    int(r[0])
                    for r in self._conn.execute(
                        f"SELECT faiss_id FROM rows WHERE faiss_id IN ({','.join('?' * len(part))})", part
                    )
                )
        return out

    def all_ids(self) -> Any:
        """Every faiss_id, ascending, as an int64 numpy array (meant for the small delta segment)."""
        import numpy as np

        with self._lock:
            records = self._conn.execute("SELECT faiss_id FROM rows ORDER BY faiss_id").fetchall()
        return np.array([r[0] for r in records], dtype=np.int64)

    def iter_rows(self, batch: int = 10000) -> Iterator[CatalogRow]:
        for _faiss_id, row in self.iter_rows_with_ids(batch):
            yield row

    def iter_rows_with_ids(self, batch: int = 10000) -> Iterator[tuple[int, CatalogRow]]:
        """(faiss_id, row) in ascending faiss_id order."""
        last = -1
        while True:
            with self._lock:  # keyset pagination: no cursor stays open across yields
                records = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM rows WHERE faiss_id > ? ORDER BY faiss_id LIMIT ?", (last, batch)
                ).fetchall()
            if not records:
                return
            for record in records:
                yield int(record[0]), _row(record)
            last = int(records[-1][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
