"""The hostile-input corpus of issue 12: catalog files that broke, or could break, the reader.

    python -c "from tests.hostile_corpus import write_corpus; print(write_corpus('/tmp/hostile'))"

Each case is written on demand (the 50 MB line is not committed) and carries what a correct
reader must make of it: how many records it reads and accepts, and the exit status of
`rag index build` and `rag index update` and the HTTP status of the admin upload. New rows use
uids H0001000... (a range per case, so uploads to one server all insert), which never collide with
an index built from `index.testing.write_catalog`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GOOD = 30  # good rows in most cases


def _row(i: int) -> bytes:
    return json.dumps(
        {
            "uid": f"H{i:07d}",
            "title": f"The Hostile Corpus Title {i}",
            "content": f"Row {i} of the hostile corpus.",
        }
    ).encode()


def _lines(start: int, n: int = GOOD) -> bytes:
    return b"".join(_row(i) + b"\n" for i in range(start, start + n))


def _array(start: int, n: int) -> bytes:
    return b"[" + b", ".join(_row(i) for i in range(start, start + n)) + b"]"


@dataclass(frozen=True)
class Case:
    """One hostile input and what must come of it.

    `read`/`accepted`: the reader's counts (None: the file cannot be read at all, nothing counted);
    `build`/`update`: exit status of the commands; `upload`: HTTP status of POST /v1/index/update
    (None: not sendable, e.g. a directory).
    """

    name: str
    read: int | None
    accepted: int | None
    build: int
    update: int
    upload: int | None

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.data"
        if self.name == "directory":
            path.mkdir(exist_ok=True)
            (path / "inside.jsonl").write_bytes(_lines(0))
            return path
        start = 1000 + 100_000 * [c.name for c in CASES].index(self.name)  # uids of its own
        path.write_bytes(_CONTENT[self.name](start))
        return path


def _line_50mb(o: int) -> bytes:
    big = b'{"uid": "H9999999", "title": "Huge", "content": "' + b"x" * (50 << 20) + b'"}\n'
    return _lines(o, 15) + big + _lines(o + 15, 15)


def _gz(o: int) -> bytes:
    return gzip.compress(_lines(o, 2000))


_CONTENT: dict[str, Callable[[int], bytes]] = {
    "truncated": lambda o: _lines(o) + _row(o + GOOD)[:25],  # the last line cut mid-record, no newline
    "bom": lambda o: b"\xef\xbb\xbf" + _lines(o),
    "nul": lambda o: (
        _lines(o, 15)
        + b'{"uid": "N1", "title": "a\x00b"}\n'
        + b"\x00" * 64
        + b"\n"
        + b"\x00"
        + _row(o + 99)
        + b"\n"
        + _lines(o + 15, 15)
    ),
    "cr_only": lambda o: _lines(o).replace(b"\n", b"\r"),  # old Mac line ends: one long line of 30 records
    "concatenated_arrays": lambda o: _array(o, 15) + _array(o + 15, 15) + b"\n",
    "array_then_lines": lambda o: _array(o, 15) + b"\n" + _lines(o + 15, 15),
    "line_50mb": _line_50mb,
    "truncated_gz": lambda o: _gz(o)[: len(_gz(o)) // 2],
    "gz_trailing_garbage": lambda o: _gz(o) + b"PK\x03\x04 this is not gzip",
    "gz_garbage": lambda o: b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8,
    "empty": lambda o: b"",
    "utf16": lambda o: _lines(o).decode().encode("utf-16"),
    "bad_99": lambda o: _row(o) + b"\n" + b"{not json\n" * 99,
}

CASES = [
    Case("truncated", read=GOOD + 1, accepted=GOOD, build=0, update=0, upload=200),
    Case("bom", read=GOOD, accepted=GOOD, build=0, update=0, upload=200),
    Case("nul", read=GOOD + 3, accepted=GOOD, build=0, update=0, upload=200),
    Case("cr_only", read=1, accepted=0, build=2, update=2, upload=422),
    Case("concatenated_arrays", read=GOOD, accepted=GOOD, build=0, update=0, upload=200),
    Case("array_then_lines", read=GOOD, accepted=GOOD, build=0, update=0, upload=200),
    Case("line_50mb", read=GOOD + 1, accepted=GOOD, build=0, update=0, upload=200),
    Case("truncated_gz", read=None, accepted=None, build=2, update=2, upload=422),
    Case("gz_trailing_garbage", read=None, accepted=None, build=2, update=2, upload=422),
    Case("gz_garbage", read=None, accepted=None, build=2, update=2, upload=422),
    Case("directory", read=None, accepted=None, build=2, update=2, upload=None),
    # an empty update has nothing to change (exit 0, no version); an empty build has no rows (2);
    # an empty upload is "nothing to do" (422)
    Case("empty", read=0, accepted=0, build=2, update=0, upload=422),
    # UTF-16: 30 "lines" split at the 0x0a bytes, plus the NUL byte after the final one
    Case("utf16", read=GOOD + 1, accepted=0, build=2, update=2, upload=422),
    Case("bad_99", read=100, accepted=1, build=2, update=2, upload=422),
]


def write_corpus(directory: str | Path) -> dict[str, Path]:
    """Write every case under `directory`; returns name -> path."""
    return {case.name: case.write(Path(directory)) for case in CASES}
