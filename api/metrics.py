"""Prometheus text-format metrics for the HTTP API, with no client library.

    curl -s http://127.0.0.1:8000/metrics

Counters and histograms live in one small thread-safe registry; `render()` writes the text
exposition format (version 0.0.4). Route labels are route *templates* (`/v1/products/{uid}`), never
raw paths, so a scan of random URLs cannot blow up the number of series.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

# Seconds. Answers take milliseconds with the extractive generator and seconds with an LLM.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labelnames = name, help_text, labelnames
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_labels(self.labelnames, labels)} {_number(value)}"


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.labelnames = name, help_text, labelnames
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            series = self._series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[len(self.buckets)] += 1
            series[-1] += value

    def count(self, *labels: str) -> float:
        with self._lock:
            series = self._series.get(labels)
            return series[len(self.buckets)] if series else 0.0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for labels, series in items:
            for bound, count in zip(self.buckets, series, strict=False):
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {_number(count)}"
            total = series[len(self.buckets)]
            le = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {_number(total)}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {_number(series[-1])}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {_number(total)}"


class Gauge:
    """A gauge whose value is read when metrics are scraped."""

    def __init__(
        self, name: str, help_text: str, read: Callable[[], Iterable[tuple[dict[str, str], float]]]
    ) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in self.read():
            names = tuple(labels)
            yield f"{self.name}{_labels(names, tuple(labels[n] for n in names))} {_number(value)}"


def resident_memory_bytes() -> int:
    """The process's resident set size (Linux /proc; elsewhere the peak RSS from getrusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if os.uname().sysname == "Darwin" else peak * 1024)


class Metrics:
    """The API's metrics; `in_flight` is read at scrape time."""

    def __init__(self, in_flight: Callable[[], int] = lambda: 0) -> None:
        self.started = time.time()
        self.requests = Counter(
            "rag_http_requests_total",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
        )
        self.latency = Histogram(
            "rag_http_request_duration_seconds",
            "Time to the end of the response (streams included), by route template.",
            ("route", "method"),
        )
        self.stages = Histogram(
            "rag_answer_stage_seconds", "Seconds per answer stage (retrieve, generate, ...).", ("stage",)
        )
        self.rejected = Counter(
            "rag_http_rejected_total", "Requests turned away before any work, by reason.", ("reason",)
        )
        self.updates = Counter("rag_index_updates_total", "Admin index updates by result.", ("result",))
        self._in_flight = in_flight

    @staticmethod
    def _index_gauges(version: str | None, rows: int | None) -> list[Any]:
        return [
            Gauge(
                "rag_index_info",
                "The index version being served (value 1; the version is a label).",
                lambda: [({"version": str(version)}, 1.0)] if version is not None else [],
            ),
            Gauge(
                "rag_index_version_timestamp_seconds",
                "Creation time of the served index version (its id is a UTC timestamp), seconds since the epoch.",
                lambda: [({}, stamp)] if (stamp := version_timestamp(version)) is not None else [],
            ),
            Gauge(
                "rag_index_rows",
                "Rows (products) in the served index version.",
                lambda: [({}, float(rows))] if rows is not None else [],
            ),
        ]

    def render(self, index_version: str | None = None, index_rows: int | None = None) -> str:
        """The text exposition; the caller passes the served index version and rows (read off the event loop)."""
        metrics: list[Any] = [self.requests, self.latency, self.stages, self.rejected, self.updates]
        metrics += self._index_gauges(index_version, index_rows)
        metrics += [
            Gauge(
                "rag_answers_in_flight",
                "Answers being computed or streamed now.",
                lambda: [({}, float(self._in_flight()))],
            ),
            Gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                lambda: [({}, float(resident_memory_bytes()))],
            ),
            Gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                lambda: [({}, self.started)],
            ),
        ]
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


def version_timestamp(version: str | None) -> float | None:
    """Seconds since the epoch of an index version id such as v20260101T120000123456Z (else None)."""
    if not version:
        return None
    try:
        parsed = _dt.datetime.strptime(str(version), "v%Y%m%dT%H%M%S%fZ")
    except ValueError:
        return None
    return parsed.replace(tzinfo=_dt.timezone.utc).timestamp()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
