"""Stream, validate, clean and de-duplicate catalog files into `CatalogRow`s.

    python -c "from rag.catalog import read_catalog; rows, s = read_catalog(['trn.json.gz'], rejects_path='rejects.jsonl'); print(s.summary())"

Input formats (detected from the bytes, not the name):
- JSON lines (the AmazonTitles `trn.json`): one object per line; `line` is the physical 1-based line.
- a JSON array `[ {...}, {...} ]` (first non-space character `[`): decoded incrementally in 1 MiB
  chunks with `json.JSONDecoder.raw_decode`; `line` is the 1-based position of the element in the array.
  Reading does not stop at the array's closing `]`: what follows is read too, line by line, as JSON
  lines, where a line starting with `[` starts another array; there `line` is the physical line
  (of the element's start, in a later array). Text after a `]` on the same line is *trailing data*.
- either of them gzip-compressed (magic bytes 1f 8b; the `.gz` suffix is not required).
Nothing reads a whole file into memory: JSON lines are read line by line from a binary stream.

Every record ends up in exactly one bucket, so `read == accepted + rejected + duplicates + trailing`
always holds (no byte of the input is dropped unreported):
- accepted: yielded as a CatalogRow (cleaned title and content; rows without content are kept and
  counted in `empty_content` unless `catalog.keep_empty_content` is false);
- rejected: written with its reason to the rejects file (`{"source", "line", "reason", "raw"}`);
- duplicates: a uid seen before (policy `keep_first`), or one seen again later (`keep_last`); they go
  to the rejects file too, with reason "duplicate uid (...)";
- trailing: text after the closing `]` of a JSON array on the same line (e.g. `] junk`); written to the
  rejects file with its line and reason "trailing data after the closing ']' of a JSON array".
Blank (whitespace-only) lines are not records: they are skipped, not counted in `read`, and counted in
`blank_lines`.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from rag.cleaning import clean_text, clean_title, compile_boilerplate
from rag.config import CatalogConfig
from rag.types import CatalogRow

__all__ = [
    "CatalogError",
    "CatalogReader",
    "ReadSummary",
    "RecordError",
    "iter_raw_records",
    "read_catalog",
    "stable_uid",
]

RAW_CHARS = 2000  # the rejects file keeps the first 2000 characters of a bad line
_CHUNK_CHARS = 1 << 20  # JSON array input is decoded in chunks of this many characters
_MAX_ELEMENT_CHARS = 64 << 20  # a JSON array element larger than this is reported as invalid
_PROGRESS_EVERY = 4096  # lines between two progress-bar updates (updating per line costs ~20%)
_SHIFT = 40  # duplicate bookkeeping packs (source index, record ordinal, line) into one int: each < 2**40
_MASK = (1 << _SHIFT) - 1


class CatalogError(ValueError):
    """A catalog file that cannot be read as a whole (a directory, a truncated or damaged .gz).

    A ValueError, so the CLI prints it as one line with exit status 2 and the API answers 422;
    the message names the file and says what is wrong with it.
    """


class RecordError(ValueError):
    """A line that is not a usable record; `reason` is what the rejects file says."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrailingData(RecordError):
    """Text after the closing `]` of a JSON array on the same line: counted in `ReadSummary.trailing`."""


TRAILING_REASON = "trailing data after the closing ']' of a JSON array"


def stable_uid(title: str, content: str) -> str:
    """A deterministic uid for a row that has none: "h:" + 16 hex chars of SHA-256(title, content).

    Callers pass the cleaned title and content, so the same product gets the same uid however its
    raw text was encoded. The unit separator keeps ("ab", "c") and ("a", "bc") apart.
    """
    digest = hashlib.sha256(f"{title}\x1f{content}".encode("utf-8", "surrogatepass")).hexdigest()
    return "h:" + digest[:16]


@dataclass
class ReadSummary:
    """What happened to every record read; `read == accepted + rejected + duplicates + trailing` always."""

    read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    empty_content: int = 0  # accepted rows without content (title-only rows)
    reasons: dict[str, int] = field(default_factory=dict)  # rejection reason (kind) -> count
    rejects_path: str | None = None
    sources: list[str] = field(default_factory=list)
    blank_lines: int = 0  # whitespace-only lines: skipped, not part of `read`
    truncated: int = 0  # accepted rows whose title or content was cut to the configured maximum
    trailing: int = 0  # text after a JSON array's closing `]` on its line: part of `read`, written to rejects
    seconds: float = 0.0

    def add_reason(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self) -> str:
        """One human line, e.g. "read 1000 = accepted 950 + rejected 30 + duplicates 20 (...); rejects: path"."""
        text = (
            f"read {self.read:,} = accepted {self.accepted:,} + rejected {self.rejected:,} "
            f"+ duplicates {self.duplicates:,}"
            + (f" + trailing data {self.trailing:,}" if self.trailing else "")
            + f" (empty content kept: {self.empty_content:,}"
        )
        if self.truncated:
            text += f"; truncated: {self.truncated:,}"
        if self.blank_lines:
            text += f"; blank lines skipped: {self.blank_lines:,}"
        text += ")"
        if self.reasons:
            top = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            text += "; top reasons: " + ", ".join(f"{reason} {count:,}" for reason, count in top)
        text += (
            f"; rejects: {self.rejects_path}" if self.rejects_path else "; rejects: not written (counts only)"
        )
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Raise AssertionError if the counts do not add up (a bug in the reader, never the data)."""
        total = self.accepted + self.rejected + self.duplicates + self.trailing
        if total != self.read:
            raise AssertionError(f"read summary does not add up: {self.summary()}")


# --------------------------------------------------------------------------- raw records


def _open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """Open `path` for reading bytes, un-gzipping when it starts with the gzip magic.

    Returns (stream to read, raw file) - the raw file's position is the progress in bytes.
    """
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        # typeshed types GzipFile as a BufferedIOBase, not as typing.BinaryIO, which it implements
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


def _peek_is_array(stream: BinaryIO) -> bool:
    """True when the first non-space character of the stream (after a BOM) is `[`; rewinds the stream.

    Rewinding a GzipFile re-decompresses from the start, which is cheap for the few KiB peeked.
    """
    head = b""
    while True:
        block = stream.read(4096)
        head += block
        stripped = head[3:] if head.startswith(codecs.BOM_UTF8) else head
        stripped = stripped.lstrip()
        if stripped or not block:
            stream.seek(0)
            return stripped[:1] == b"["


def _show_raw(raw: bytes | str) -> str:
    """The bad line as text for the rejects file: bytes that are not UTF-8 appear as \\xNN."""
    if isinstance(raw, str):  # array elements keep undecodable bytes as surrogate escapes
        raw = raw.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace").strip(", \t\r\n")[:RAW_CHARS]


def _read_line(stream: BinaryIO, limit: int) -> tuple[bytes, int]:
    """One physical line of at most `limit` bytes (newline excluded) without reading more into memory.

    Returns (line, 0), or for a longer line (its first `limit` + 1 bytes, its length in bytes): the
    rest of it is read and dropped in 1 MiB pieces, so one 50 MB line costs 1 MiB, not a gigabyte.
    """
    line = stream.readline(limit + 1)
    if len(line) <= limit or line.endswith(b"\n"):
        return line, 0
    return line, len(line) + _skip_line(stream)


def _skip_line(stream: BinaryIO) -> int:
    """Read up to and including the next newline in 1 MiB pieces; the bytes skipped, newline excluded."""
    total = 0
    while True:
        rest = stream.readline(1 << 20)
        total += len(rest)
        if not rest.endswith(b"\n"):
            if not rest:
                return total
            continue
        return total - 1 - rest.endswith(b"\r\n")


def _overlong(size: int, limit: int) -> RecordError:
    return RecordError(f"line longer than catalog.max_line_bytes={limit} ({size:,} bytes)")


def _parse_line(line: bytes) -> dict[str, Any] | RecordError | None:
    """One JSON line: the object, the RecordError saying why it is not one, or None when blank."""
    if not line.strip():
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RecordError(
            f"invalid UTF-8 (byte {exc.start} of the line: {line[exc.start : exc.start + 4]!r})"
        )
    try:
        obj = json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        return RecordError(f"invalid JSON ({exc.msg} column {exc.colno})")
    except RecursionError:
        return RecordError("invalid JSON (nested too deeply)")
    if not isinstance(obj, dict):
        return RecordError(f"not a JSON object (got {type(obj).__name__})")
    return obj


_LAZY: dict[str, Any] = {}  # `_iter_json_lines(lazy=True)`: a line left for a worker process to parse


def _iter_json_lines(
    stream: BinaryIO, tick: Callable[[], None] | None, max_line_bytes: int, lazy: bool = False
) -> Iterator[tuple[int, bytes, dict[str, Any] | RecordError | None]]:
    """Yield (line number, raw bytes, parsed object or error); None for blank lines.

    `lazy`: yield `_LAZY` instead of parsing each line (the parallel reader parses in its workers).
    """
    number = 0
    while True:
        line, overlong = _read_line(stream, max_line_bytes)
        if not line:
            return
        number += 1
        if tick is not None and number % _PROGRESS_EVERY == 0:
            tick()
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[3:]  # a BOM at file start is an encoding marker, not data
        if overlong:
            yield number, line, _overlong(overlong, max_line_bytes)
        else:
            yield number, line, (_LAZY if lazy else _parse_line(line))


class _Prefixed(io.RawIOBase):
    """`prefix` bytes, then the rest of `stream`: hands what an array reader read past its `]` back."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix.nbytes:
            n = min(len(buffer), self._prefix.nbytes)
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _prefixed(prefix: bytes, stream: BinaryIO) -> BinaryIO:
    return io.BufferedReader(_Prefixed(prefix, stream))


def _iter_after_array(
    stream: BinaryIO, line: int, tick: Callable[[], None] | None, max_line_bytes: int
) -> Iterator[tuple[int, bytes | str, dict[str, Any] | RecordError | None]]:
    """What follows a JSON array's closing `]` (on physical line `line`), until the end of the file.

    The rest of the `]` line is trailing data unless it starts another array; each later line is
    a JSON line, except that a line starting with `[` starts another array (read the same way,
    its elements numbered by physical line). `line` numbers are physical lines of the file.
    """
    number, at_close = line, True
    text = stream.readline(max_line_bytes + 1)
    while text:
        stripped = text.strip()
        if stripped.startswith(b"["):
            closed = yield from _iter_json_array(
                _prefixed(text, stream), tick, max_line_bytes, first_line=number, by_line=True
            )
            if closed is None:
                return
            (stream, number), at_close = closed, True
            text = stream.readline(max_line_bytes + 1)
            continue
        overlong = 0
        if len(text) > max_line_bytes and not text.endswith(
            b"\n"
        ):  # read the rest of the long line, dropping it
            overlong = len(text) + _skip_line(stream)
        if at_close:
            if stripped:
                yield number, text, TrailingData(TRAILING_REASON)
            at_close = False
        else:
            yield number, text, (_overlong(overlong, max_line_bytes) if overlong else _parse_line(text))
        if tick is not None and number % _PROGRESS_EVERY == 0:
            tick()
        text = stream.readline(max_line_bytes + 1)
        number += 1


_LONE_SURROGATE = re.compile("[\udc80-\udcff]")


class _ArrayText:
    """The decoded text of a JSON array read in chunks (`more`), with physical line numbers (`line_at`)."""

    def __init__(self, stream: BinaryIO, tick: Callable[[], None] | None, first_line: int) -> None:
        self.stream, self.tick, self.first_line = stream, tick, first_line
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.buf = ""
        self.eof = False
        self.lines_dropped = 0  # newlines in the part of the buffer already dropped
        self.lines_counted, self.counted_to = 0, 0  # newlines in buf[:counted_to]

    def line_at(self, index: int) -> int:
        """Physical line of buf[index] (indexes only move forward)."""
        self.lines_counted += self.buf.count("\n", self.counted_to, index)
        self.counted_to = index
        return self.first_line + self.lines_dropped + self.lines_counted

    def more(self) -> bool:
        if self.eof:
            return False
        block = self.stream.read(_CHUNK_CHARS)
        if not block:
            self.buf += self.decoder.decode(b"", final=True)
            self.eof = True
            return False
        self.buf += self.decoder.decode(block)
        if self.tick is not None:
            self.tick()
        return True

    def skip_separators(self, pos: int) -> int:
        """The position after the whitespace and commas at `pos` (reading on as needed)."""
        while True:
            while pos < len(self.buf) and self.buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(self.buf) or not self.more():
                return pos

    def drop_before(self, pos: int) -> int:
        """Forget what precedes `pos` so the buffer stays small; returns the new position of `pos` (0)."""
        self.line_at(pos)
        self.lines_dropped += self.lines_counted
        self.lines_counted, self.counted_to = 0, 0
        self.buf = self.buf[pos:]
        return 0

    def rest_after(self, pos: int) -> BinaryIO:
        """A stream of the bytes after buf[pos] (the text not decoded yet included)."""
        pending = self.decoder.getstate()[0] if not self.eof else b""
        return _prefixed(self.buf[pos + 1 :].encode("utf-8", "surrogateescape") + pending, self.stream)


def _decode_element(
    text: _ArrayText, decoder: json.JSONDecoder, pos: int, max_element_chars: int
) -> tuple[Any, int]:
    """(the value at `pos`, or the JSONDecodeError / RecordError it raised, the position after it)."""
    last_error: tuple[str, int] | None = None
    while True:
        try:
            return decoder.raw_decode(text.buf, pos)
        except json.JSONDecodeError as exc:
            error = (exc.msg, exc.pos)
            # An element cut by the chunk boundary fails at (or, for a cut literal like "tru",
            # near) the end of the buffer, or inside a string still open there: read on. An error
            # that stays where it was once more text follows is a real one.
            at_end = exc.msg.startswith("Unterminated string") or exc.pos >= len(text.buf) - 16
            if (
                (not at_end and error == last_error)
                or len(text.buf) - pos > max_element_chars
                or not text.more()
            ):
                return exc, exc.pos
            last_error = error
        except RecursionError:
            return RecordError("invalid JSON (nested too deeply)"), pos + 1


def _rejected_element(
    text: _ArrayText,
    decoder: json.JSONDecoder,
    failure: tuple[json.JSONDecodeError, int],
    pos: int,
    position: int,
    max_element_chars: int,
) -> tuple[str, RecordError, int]:
    """(raw text, error, where reading resumes) for an element that is not valid JSON."""
    exc, end = failure
    while True:  # the next element may start in a chunk not read yet
        resume = _resync(decoder, text.buf, max(end, pos + 1))
        if resume < len(text.buf) or len(text.buf) - pos > max_element_chars or not text.more():
            break
    raw = text.buf[pos:resume]
    if resume - pos > max_element_chars:
        error = RecordError(
            f"array element {position} longer than catalog.max_line_bytes={max_element_chars} "
            f"(at least {resume - pos:,} characters)"
        )
        return raw[:RAW_CHARS], error, resume
    error = RecordError(
        f"invalid JSON ({exc.msg} character {max(0, exc.pos - pos) + 1} of array element {position})"
    )
    return raw, error, resume


def _element_record(raw: str, obj: Any) -> dict[str, Any] | RecordError:
    """A decoded element as a record, or the reason it is not one."""
    if isinstance(obj, RecordError):
        return obj
    if _LONE_SURROGATE.search(raw) is not None:
        return RecordError("invalid UTF-8 (bytes that are not UTF-8 in this element)")
    if not isinstance(obj, dict):
        return RecordError(f"not a JSON object (got {type(obj).__name__})")
    return obj


def _iter_json_array(
    stream: BinaryIO,
    tick: Callable[[], None] | None,
    max_element_chars: int = _MAX_ELEMENT_CHARS,
    *,
    first_line: int = 1,
    by_line: bool = False,
) -> Generator[tuple[int, str, dict[str, Any] | RecordError | None], None, tuple[BinaryIO, int] | None]:
    """Yield (1-based array position, raw element text, parsed object or error) from `[ {...}, ... ]`.

    Bytes that are not UTF-8 are decoded with `surrogateescape`, so only the element that holds
    them is rejected. After a syntax error the reader resynchronises at the next comma followed by
    a whole JSON value; the text skipped is one rejected element.

    `by_line`: number elements by the physical line they start on (the stream's first line being
    `first_line`) instead of by position. Returns, once the array is closed, (a stream of the bytes
    after the `]`, the physical line of the `]`); None when the file ended first.
    """
    decoder = json.JSONDecoder()
    text = _ArrayText(stream, tick, first_line)
    while "[" not in text.buf and text.more():
        pass
    text.buf = text.buf.removeprefix("\ufeff")
    pos = text.buf.index("[") + 1
    position = 0
    failed_last = False
    while True:
        pos = text.skip_separators(pos)  # whitespace and separators between elements
        if pos >= len(text.buf):
            if not failed_last:  # a cut element already says the file is truncated; else say it here
                position += 1
                yield (
                    (text.line_at(len(text.buf)) if by_line else position),
                    "",
                    RecordError("invalid JSON (the array is not closed: missing ']' at end of file)"),
                )
            return None
        if text.buf[pos] == "]":
            close_line = text.line_at(pos)
            return text.rest_after(pos), close_line
        if pos > _CHUNK_CHARS:  # drop what has been consumed so the buffer stays small
            pos = text.drop_before(pos)
        position += 1
        number = text.line_at(pos) if by_line else position
        obj, end = _decode_element(text, decoder, pos, max_element_chars)
        if isinstance(obj, json.JSONDecodeError):
            raw, error, pos = _rejected_element(text, decoder, (obj, end), pos, position, max_element_chars)
            yield number, raw, error
            failed_last = True
            continue
        raw = text.buf[pos:end]
        pos = end
        failed_last = False
        yield number, raw, _element_record(raw, obj)


def _resync(decoder: json.JSONDecoder, buf: str, start: int) -> int:
    """Where the element after a broken one starts: just after the first comma (from `start`) that
    is followed by a whole JSON value and then `,` or `]`; len(buf) when there is none."""
    at = buf.find(",", start)
    while at != -1:
        begin = at + 1
        while begin < len(buf) and buf[begin] in " \t\r\n":
            begin += 1
        try:
            _, end = decoder.raw_decode(buf, begin)
        except (json.JSONDecodeError, RecursionError):
            at = buf.find(",", at + 1)
            continue
        while end < len(buf) and buf[end] in " \t\r\n":
            end += 1
        if end >= len(buf) or buf[end] in ",]":
            return begin
        at = buf.find(",", at + 1)
    return len(buf)


def _iter_file(
    path: Path, progress_bar: Any | None = None, max_line_bytes: int = _MAX_ELEMENT_CHARS, lazy: bool = False
) -> Iterator[tuple[int, bytes | str, dict[str, Any] | RecordError | None]]:
    try:
        stream, raw_file = _open_binary(path)
    except IsADirectoryError:
        raise CatalogError(
            f"{path}: is a directory; pass the catalog file (trn.json, .jsonl, .json, .gz)"
        ) from None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot open the catalog file ({exc.strerror or exc})") from None
    done = 0

    def tick() -> None:
        nonlocal done
        now = raw_file.tell()
        if progress_bar is not None:  # always, where tick is passed on (records() below)
            progress_bar.update(now - done)
        done = now

    def records() -> Iterator[tuple[int, bytes | str, dict[str, Any] | RecordError | None]]:
        ticker = tick if progress_bar is not None else None
        if _peek_is_array(stream):
            closed = yield from _iter_json_array(stream, ticker, max_line_bytes)
            if closed is not None:  # read on after the `]`: nothing after it may vanish
                yield from _iter_after_array(*closed, ticker, max_line_bytes)
        else:
            yield from _iter_json_lines(stream, ticker, max_line_bytes, lazy)

    last = 0  # the line (array position) of the last record read, for the message of a file cut short
    try:
        for record in records():
            last = record[0]
            yield record
        if progress_bar is not None:
            tick()
    except (OSError, EOFError, zlib.error) as exc:
        raise _unreadable(path, last, exc) from exc
    finally:
        stream.close()
        raw_file.close()


def _unreadable(path: Path, last: int, exc: BaseException) -> CatalogError:
    """What is wrong with a file whose bytes cannot be read to the end (mostly a damaged .gz)."""
    at = f" (after line {last:,} of the uncompressed data)" if last else ""
    text = str(exc)
    if isinstance(exc, EOFError):  # gzip: "Compressed file ended before the end-of-stream marker was reached"
        what = (
            f"the gzip data ends before its end-of-stream marker{at}: the file is truncated (an interrupted "
            "download or copy?); fetch or copy it again"
        )
    elif isinstance(exc, gzip.BadGzipFile) and text.startswith("Not a gzipped file"):
        what = (
            f"bytes that are not gzip follow the end of the gzip data{at} (trailing garbage, or another file "
            "appended to it); remove them or re-create the file"
        )
    elif isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        what = f"the gzip data is damaged ({text}){at}; re-create or fetch the file again"
    else:
        what = f"cannot read it ({getattr(exc, 'strerror', None) or text}){at}"
    return CatalogError(f"{path}: {what}")


def iter_raw_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """Yield (line number or array position, parsed object or the RecordError) for every non-blank line."""
    for number, _raw, obj in _iter_file(Path(path)):
        if obj is not None:
            yield number, obj


# --------------------------------------------------------------------------- validation


def _truncate(text: str, limit: int) -> str:
    """Cut to at most `limit` characters, at the last space when one is near the end."""
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit * 0.8:
        cut = cut[:space]
    return cut.rstrip()


class CatalogReader:
    """Streams catalog files into cleaned, validated, de-duplicated `CatalogRow`s.

        reader = CatalogReader(config.catalog, rejects_path="data/index/rejects.jsonl")
        for row in reader.iter_rows(["trn.json.gz"], progress=True):
            ...
        print(reader.summary.summary())

    The rejects file is `config.rejects_path` when set, else the `rejects_path` argument; with
    neither only the counts are kept. Over-long fields follow `config.overlong` ("truncate" cuts
    them to `max_title_chars`/`max_content_chars`; "reject" rejects the line).
    """

    def __init__(self, config: CatalogConfig | None = None, rejects_path: str | Path | None = None) -> None:
        self.config = config if config is not None else CatalogConfig()
        c = self.config
        if c.duplicate_policy not in ("keep_first", "keep_last", "reject"):
            raise ValueError(
                f"catalog.duplicate_policy: {c.duplicate_policy!r} is not one of 'keep_first', 'keep_last', 'reject'"
            )
        if c.overlong not in ("truncate", "reject"):
            raise ValueError(f"catalog.overlong: {c.overlong!r} is not one of 'truncate', 'reject'")
        for name in ("min_title_chars", "max_title_chars", "max_content_chars", "max_line_bytes"):
            value = getattr(c, name)
            if not isinstance(value, int) or value < (0 if name == "min_title_chars" else 1):
                raise ValueError(f"catalog.{name}: must be a positive integer, got {value!r}")
        self.boilerplate = compile_boilerplate(c.boilerplate_patterns)
        self._truncated = False
        chosen = c.rejects_path or rejects_path
        self.rejects_path: Path | None = Path(chosen) if chosen else None
        self.summary = ReadSummary(rejects_path=str(self.rejects_path) if self.rejects_path else None)
        self._pool: _CleaningPool | None = None

    # ---- one record -> row

    def _make_row(
        self, obj: dict[str, Any], source: str, number: int
    ) -> tuple[CatalogRow | RecordError, bool]:
        """Validate and clean one parsed record; returns (row or error, whether a field was truncated)."""
        row = self._validate(obj, source, number)
        return row, self._truncated

    def _validate(self, obj: dict[str, Any], source: str, number: int) -> CatalogRow | RecordError:
        self._truncated = False
        c = self.config
        title = obj.get("title")
        if title is None:
            return RecordError("missing title")
        if not isinstance(title, str):
            return RecordError(f"title is not a string (got {type(title).__name__})")
        content = obj.get("content")
        if content is None:
            content = ""
        elif not isinstance(content, str):
            return RecordError(f"content is not a string or null (got {type(content).__name__})")
        uid = obj.get("uid")
        if isinstance(uid, bool) or not (uid is None or isinstance(uid, (str, int))):
            return RecordError(f"uid is not a string, integer or null (got {type(uid).__name__})")

        title = clean_title(title)
        if not title:
            return RecordError("empty title after cleaning")
        if len(title) < c.min_title_chars:
            return RecordError(f"title shorter than catalog.min_title_chars={c.min_title_chars}")
        content = clean_text(content, self.boilerplate)
        truncated = False
        if len(title) > c.max_title_chars:
            if c.overlong == "reject":
                return RecordError(f"title longer than catalog.max_title_chars={c.max_title_chars}")
            title, truncated = _truncate(title, c.max_title_chars), True
        if len(content) > c.max_content_chars:
            if c.overlong == "reject":
                return RecordError(f"content longer than catalog.max_content_chars={c.max_content_chars}")
            content, truncated = _truncate(content, c.max_content_chars), True
        if not content and not c.keep_empty_content:
            return RecordError("empty content")

        if isinstance(uid, int):
            uid = str(uid)
        elif isinstance(uid, str):
            uid = uid.strip()
            if not uid.isprintable() or " " in uid:  # isprintable() is False for other whitespace
                return RecordError("uid contains whitespace or control characters")
        if not uid:
            uid = stable_uid(title, content)
        self._truncated = truncated
        return CatalogRow(uid=uid, title=title, content=content, source=source, line=number)

    # ---- files -> rows

    def iter_rows(
        self, paths: Sequence[str | Path] | str | Path, progress: bool = False, workers: int | None = None
    ) -> Iterator[CatalogRow]:
        """Stream the rows of `paths` in order; `self.summary` is complete once iteration ends.

        `workers` (default `catalog.read_workers`): processes that parse, validate and clean the lines
        of JSON-lines files (`_CleaningPool`); the rows, the summary and the rejects file are the same
        as with none, in the same order. None/0 in both: in this process.
        """
        if workers is None:
            workers = self.config.read_workers
        path_list = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
        for path in path_list:
            if not path.exists():
                raise FileNotFoundError(f"{path}: catalog file not found")
            if path.is_dir():
                raise CatalogError(
                    f"{path}: is a directory; pass the catalog file (trn.json, .jsonl, .json, .gz)"
                )
        self.summary = ReadSummary(
            rejects_path=str(self.rejects_path) if self.rejects_path else None,
            sources=[str(p) for p in path_list],
        )
        started = time.perf_counter()
        last_seen: dict[str, int] | None = None
        if self.config.duplicate_policy == "keep_last":
            last_seen = self._last_positions(path_list)
        rejects = None
        if self.rejects_path is not None:
            self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
            rejects = open(self.rejects_path, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        bar = None
        if progress:
            from tqdm.auto import tqdm

            total = sum(p.stat().st_size for p in path_list)
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="reading catalog")
        count = _auto_workers(path_list) if workers == -1 else int(workers or 0)
        self._pool = _CleaningPool(self.config, count) if count > 1 else None
        try:
            yield from self._rows(path_list, last_seen, rejects, bar)
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if rejects is not None:
                rejects.close()
            if bar is not None:
                bar.close()
            self.summary.seconds = time.perf_counter() - started
        self.summary.check()

    def _records(
        self, path: Path, bar: Any
    ) -> Iterator[tuple[int, bytes | str, Any, tuple[CatalogRow | RecordError, bool] | None]]:
        """(line, raw, parsed object or error or None, (row or error, truncated) when a worker made it)."""
        pool = getattr(self, "_pool", None)
        records = _iter_file(path, bar, self.config.max_line_bytes, lazy=pool is not None)
        if pool is None:
            for number, raw, obj in records:
                yield number, raw, obj, None
        else:
            yield from pool.rows(records, str(path))

    def _last_positions(self, paths: list[Path]) -> dict[str, int]:
        """keep_last, first pass: the last (source, line) of every uid among the valid rows."""
        last: dict[str, int] = {}
        for index, path in enumerate(paths):
            ordinal = 0  # the same count as in _rows: every non-blank record
            for number, _raw, obj in _iter_file(path, max_line_bytes=self.config.max_line_bytes):
                if obj is None:
                    continue
                ordinal += 1
                if isinstance(obj, RecordError):
                    continue
                row, _ = self._make_row(obj, str(path), number)
                if isinstance(row, CatalogRow):
                    last[row.uid] = _pack(index, ordinal, number)
        return last

    def _rows(
        self, paths: list[Path], last_seen: dict[str, int] | None, rejects: Any, bar: Any
    ) -> Iterator[CatalogRow]:
        s = self.summary
        policy = self.config.duplicate_policy
        first_seen: dict[str, int] = {}

        def where(packed: int, current: int) -> str:
            index, number = packed >> (2 * _SHIFT), packed & _MASK
            return f"line {number}" if index == current else f"{paths[index]} line {number}"

        def reject(source: str, number: int, reason: str, raw: bytes | str, kind: str) -> None:
            s.add_reason(kind)
            if rejects is not None:
                record = {"source": source, "line": number, "reason": reason, "raw": _show_raw(raw)}
                rejects.write(json.dumps(record, ensure_ascii=False) + "\n")

        for index, path in enumerate(paths):
            source = str(path)
            ordinal = 0  # identifies a record within its file (a line number may repeat after an array)
            for number, raw, obj, made in self._records(path, bar):
                if obj is None:
                    s.blank_lines += 1
                    continue
                s.read += 1
                ordinal += 1
                if isinstance(obj, TrailingData):
                    s.trailing += 1
                    reject(source, number, obj.reason, raw, "trailing data")
                    continue
                if made is not None:  # validated and cleaned by a worker process
                    row, truncated = made
                else:
                    row, truncated = (
                        (obj, False) if isinstance(obj, RecordError) else self._make_row(obj, source, number)
                    )
                if isinstance(row, RecordError):
                    s.rejected += 1
                    reject(source, number, row.reason, raw, _reason_kind(row.reason))
                    continue
                here = _pack(index, ordinal, number)
                if last_seen is not None:
                    kept = last_seen[row.uid]
                    if kept != here:
                        s.duplicates += 1
                        reject(
                            source,
                            number,
                            f"duplicate uid (kept the last one, at {where(kept, index)})",
                            raw,
                            "duplicate uid",
                        )
                        continue
                else:
                    first = first_seen.get(row.uid)
                    if first is not None:
                        reason = f"duplicate uid (first seen at {where(first, index)})"
                        if policy == "reject":
                            s.rejected += 1
                        else:
                            s.duplicates += 1
                        reject(source, number, reason, raw, "duplicate uid")
                        continue
                    first_seen[row.uid] = here
                s.accepted += 1
                s.truncated += truncated
                if not row.content:
                    s.empty_content += 1
                yield row


# --------------------------------------------------------------------------- parallel cleaning

_PARALLEL_MIN_BYTES = 64 << 20  # read_workers -1 (auto): files smaller than this are cleaned in-process
_BATCH_LINES = 2048  # lines per task handed to a cleaning process


def _auto_workers(paths: Sequence[Path]) -> int:
    """`catalog.read_workers: -1`: half the cores (at most 8) for large inputs, none for small ones or 2 cores."""
    try:
        size = sum(p.stat().st_size for p in paths)
    except OSError:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores // 2) if size >= _PARALLEL_MIN_BYTES and cores >= 4 else 0


_WORKER_READER: CatalogReader | None = None


def _init_worker(config: CatalogConfig) -> None:
    global _WORKER_READER  # noqa: PLW0603 - set once per worker process by the pool's initializer
    _WORKER_READER = CatalogReader(config)


def _clean_batch(source: str, lines: list[tuple[int, bytes]]) -> list[Any]:
    """In a worker: per line None (blank), a RecordError, or (uid, title, content, truncated)."""
    reader = _WORKER_READER
    assert reader is not None
    out: list[Any] = []
    for number, line in lines:
        obj = _parse_line(line)
        if obj is None or isinstance(obj, RecordError):
            out.append(obj)
            continue
        row, truncated = reader._make_row(obj, source, number)
        out.append(row if isinstance(row, RecordError) else (row.uid, row.title, row.content, truncated))
    return out


class _CleaningPool:
    """Processes that parse, validate and clean JSON lines for `CatalogReader`, in input order.

    The reading process reads the lines (so line numbers, progress and rejects stay as they are),
    sends them in batches of `_BATCH_LINES`, and keeps at most 4 batches per process in flight
    (bounded memory); the de-duplication, the summary and the rejects file stay in the reading
    process, so the output is the same as without workers. The processes come from a fresh
    interpreter (forkserver), never a fork of a process that may hold a GPU context or threads.
    """

    def __init__(self, config: CatalogConfig, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self.workers = workers
        self.executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(config,),
        )

    def rows(
        self, records: Iterator[tuple[int, bytes | str, Any]], source: str
    ) -> Iterator[tuple[int, bytes | str, Any, tuple[CatalogRow | RecordError, bool] | None]]:
        from collections import deque

        in_flight: deque[tuple[list[tuple[int, bytes | str, Any]], Any]] = deque()

        def drain(batch: list[tuple[int, bytes | str, Any]], future: Any) -> Iterator[tuple[Any, ...]]:
            results = iter(future.result()) if future is not None else iter(())
            for number, raw, obj in batch:
                if obj is not _LAZY:  # parsed here (an overlong line's error, JSON array elements)
                    yield number, raw, obj, None
                    continue
                made = next(results)
                if made is None or isinstance(made, RecordError):
                    yield number, raw, made, None
                else:
                    uid, title, content, truncated = made
                    row = CatalogRow(uid=uid, title=title, content=content, source=source, line=number)
                    yield number, raw, _LAZY, (row, truncated)

        def submit(batch: list[tuple[int, bytes | str, Any]]) -> None:
            # a line left lazy is always the raw bytes read from the file (_iter_json_lines(lazy=True))
            lines = [(n, cast(bytes, raw)) for n, raw, obj in batch if obj is _LAZY]
            future = self.executor.submit(_clean_batch, source, lines) if lines else None
            in_flight.append((batch, future))

        batch: list[tuple[int, bytes | str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= _BATCH_LINES:
                submit(batch)
                batch = []
                if len(in_flight) >= 4 * self.workers:
                    yield from drain(*in_flight.popleft())
        if batch:
            submit(batch)
        while in_flight:
            yield from drain(*in_flight.popleft())

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _pack(index: int, ordinal: int, number: int) -> int:
    """(source index, record ordinal, line) as one int: a row's identity and where it was (for messages)."""
    return (((index << _SHIFT) | ordinal) << _SHIFT) | number


def _reason_kind(reason: str) -> str:
    """The reason without its details ("invalid JSON (...)" -> "invalid JSON"): the summary counts kinds."""
    return reason.split(" (", 1)[0]


def read_catalog(
    paths: Sequence[str | Path] | str | Path,
    config: CatalogConfig | None = None,
    rejects_path: str | Path | None = None,
    progress: bool = False,
) -> tuple[list[CatalogRow], ReadSummary]:
    """Read every row into a list (convenience for small files and tests) and return the summary."""
    reader = CatalogReader(config, rejects_path=rejects_path)
    rows = list(reader.iter_rows(paths, progress=progress))
    return rows, reader.summary
