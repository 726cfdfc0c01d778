"""What the benchmark scripts share: peak memory, the CPU's name, latency percentiles, the result file.

    from benchmarks.common import peak_rss_mib, write_result

Imported by the scripts once they have put the repository root on sys.path (each does, first).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_rss_vmhwm_mb() -> float:
    """This process's peak RSS in MB from /proc's VmHWM, for scripts that run their measurements in
    child processes: getrusage's ru_maxrss survives fork + exec on Linux, so a child would report its
    parent's peak when the parent was larger."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # pragma: no cover - not Linux
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo, or `default` where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def latency_percentiles(**series_ms: Sequence[float]) -> dict[str, float]:
    """`name=[ms, ...]` -> {"name_p50_ms": ..., "name_p95_ms": ...}, in the order given."""
    from rag.evaluation.metrics import percentile

    out: dict[str, float] = {}
    for name, values in series_ms.items():
        out[f"{name}_p50_ms"] = percentile(list(values), 50)
        out[f"{name}_p95_ms"] = percentile(list(values), 95)
    return out


_REPO = Path(__file__).resolve().parents[1]


def portable(value: Any) -> Any:
    """`value` with this machine's paths made portable, for result files that are committed: a path
    inside the repository's parent folder becomes relative to the repository (`../shared/...`), one
    in the home folder starts with `~`; lists and dicts are rewritten throughout."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        if value.startswith(str(_REPO.parent) + "/"):
            return os.path.relpath(value, _REPO)
        home = str(Path.home())
        if value.startswith(home + "/"):
            return "~" + value[len(home) :]
    return value


def write_result(path: str | Path, payload: Any, *, announce: bool = True, **dumps: Any) -> Path:
    """Write a benchmark's JSON result (indented, final newline; its folder made as needed), with
    machine paths made `portable`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(portable(payload), indent=2, **dumps) + "\n", encoding="utf-8")
    if announce:
        print(f"wrote {out}")
    return out


def synthetic_titles(rows: int, seed: int) -> list[str]:
    """The cleaned titles of `rows` synthetic catalog rows (rag/synthetic.py)."""
    from rag.cleaning import clean_title
    from rag.synthetic import generate_records

    return [clean_title(r["title"]) for r in generate_records(rows, seed=seed)]


def embed_cached(
    embedder: Any, titles: list[str], cache: Path | None, **embed: Any
) -> tuple[Any, dict[str, Any]]:
    """(title vectors, how they were got): from the `.npy` cache when it holds as many vectors as there
    are titles, else embedded (`embedder.embed(titles, **embed)`) and cached."""
    import time

    import numpy as np

    if cache is not None and cache.exists():
        vectors = np.load(cache, allow_pickle=False)
        if vectors.shape[0] == len(titles):
            return vectors, {"cached": True}
    started = time.perf_counter()
    vectors = np.asarray(embedder.embed(titles, **embed), dtype=np.float32)
    seconds = time.perf_counter() - started
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, vectors, allow_pickle=False)
    return vectors, {"cached": False, "seconds": seconds, "titles_per_s": len(titles) / seconds}
