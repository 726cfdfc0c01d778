"""The row metadata of one index version: a single SQLite table next to the FAISS file.

    sqlite3 data/index/versions/<version>/meta.sqlite "select count(*) from rows"

    rows(faiss_id INTEGER PRIMARY KEY, uid TEXT UNIQUE, title, content, content_hash, source, line)

`faiss_id` is the id the vector carries in FAISS (`index.vector.uid_to_id`), so a search result
maps to its row with one primary-key lookup. Rows are stored cleaned (as the catalog reader
returns them). `content_hash` lets `rag index update` skip rows that did not change.
"""
from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from rag.types import CatalogRow

META_FILE = "meta.sqlite"
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
                records = self._conn.execute(f"SELECT {_COLUMNS} FROM rows WHERE faiss_id IN ({marks})", part).fetchall()
            for record in records:
                found[int(record[0])] = _row(record)
        return [found.get(int(i)) for i in ids]

    def get_by_uid(self, uid: str) -> CatalogRow | None:
        with self._lock:
            record = self._conn.execute(f"SELECT {_COLUMNS} FROM rows WHERE uid = ?", (uid,)).fetchone()
        return _row(record) if record else None

    def iter_rows(self, batch: int = 10000) -> Iterator[CatalogRow]:
        last = -1
        while True:
            with self._lock:  # keyset pagination: no cursor stays open across yields
                records = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM rows WHERE faiss_id > ? ORDER BY faiss_id LIMIT ?", (last, batch)
                ).fetchall()
            if not records:
                return
            for record in records:
                yield _row(record)
            last = int(records[-1][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
