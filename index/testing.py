"""Helpers for tests and benchmarks of the index mechanics: small catalogs and fast configs.

    python -c "from index.testing import write_catalog; write_catalog('/tmp/c.jsonl', 100)"

The catalogs are generated (no real catalog text); `hashing_config` uses the model-free
`HashingEmbedder` so a build of a few thousand rows takes well under a second.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rag.config import Config, load_config

_WORDS = (
    "river",
    "garden",
    "silent",
    "winter",
    "copper",
    "lantern",
    "harbor",
    "orchard",
    "velvet",
    "meadow",
    "falcon",
    "ember",
    "willow",
    "granite",
    "violet",
    "summit",
    "canyon",
    "thistle",
    "cedar",
    "marble",
    "comet",
    "prairie",
    "sparrow",
    "quartz",
    "tundra",
    "maple",
    "saffron",
    "beacon",
    "glacier",
    "juniper",
    "cobalt",
    "harvest",
    "island",
    "compass",
    "echo",
    "fable",
    "nimbus",
    "onyx",
    "pebble",
)
_KINDS = ("Cookbook", "Novel", "Field Guide", "Board Book", "Travel Atlas", "Poetry", "Memoir", "Puzzle Set")


def product_row(i: int, *, marker: str = "", seed: int = 0, title_variant: int = 0) -> dict[str, Any]:
    """A deterministic product: uid `P{i:07d}`, a varied title, a short description carrying `marker`."""
    rnd = random.Random(seed * 1_000_003 + i)
    words = rnd.sample(_WORDS, 3)
    title = f"The {words[0].title()} {words[1].title()} {rnd.choice(_KINDS)} {i}"
    if title_variant:
        title += f" (edition {title_variant})"
    content = f"A {words[2]} {rnd.choice(_KINDS).lower()} about {words[0]} and {words[1]}. {marker}".strip()
    return {"uid": f"P{i:07d}", "title": title, "content": content}


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


def write_catalog(
    path: str | Path, n: int, *, start: int = 0, marker: str = "", seed: int = 0, title_variant: int = 0
) -> Path:
    """JSON lines of `n` products with uids P{start}..P{start+n-1}."""
    return write_rows(
        path,
        (
            product_row(i, marker=marker, seed=seed, title_variant=title_variant)
            for i in range(start, start + n)
        ),
    )


def hashing_config(
    index_path: str | Path,
    *,
    dim: int = 64,
    index_type: str = "flat",
    keep_versions: int = 0,
    extra: list[str] | None = None,
) -> Config:
    """A config for index-mechanics tests: HashingEmbedder, no lexical artifacts, all versions kept."""
    overrides = [
        f"index.path={index_path}",
        f"embedding.model=hashing:{dim}",
        f"index.type={index_type}",
        f"index.keep_versions={keep_versions}",
        "index.descriptions=false",
        "index.ivf_nlist=16",
    ]
    return load_config(None, overrides + list(extra or []))
