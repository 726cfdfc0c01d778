"""The boilerplate audit: what each removal pattern of rag/cleaning.py takes out of a catalog, what is left.

    python -m rag.audit ../shared/data/amazontitles/trn_sample.jsonl          # counts only
    python -m rag.audit ../shared/data/amazontitles/trn_sample.jsonl --show   # ... and print them

Its own module (a command over rag.catalog and rag.cleaning), so that the cleaning module, which the
catalog reader uses, does not import the reader back.
"""

from __future__ import annotations

import re

from rag.catalog import iter_raw_records
from rag.cleaning import _normalise, clean_text, clean_title, default_boilerplate

# Words that suggest a notice the patterns missed; an audit lists the cleaned texts that still hold one.
_SUSPICIOUS = re.compile(
    r"This\s*text\s*refers|Business\s*Information|Reed\s*Elsevier|Library\s*Association\.|AudioFile"
    r"|Starred\s*Review|\[Signature\]|All\s*rights\s*reserved|&(?:#\d+|#[xX][0-9a-fA-F]+|[a-zA-Z]+);"
)


def audit(path: str, show: bool = False, limit: int = 20) -> dict[str, int]:
    """Count, per boilerplate pattern, the descriptions of `path` it changes, and the cleaned texts
    that still look like they hold a notice or an entity. With `show`, print those removals/leftovers."""
    patterns = default_boilerplate()
    counts = {"records": 0, "with_content": 0, "leftovers": 0}
    for i in range(len(patterns)):
        counts[f"pattern_{i}"] = 0
    shown = 0
    for line, record in iter_raw_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("content"), str):
            continue
        counts["records"] += 1
        text = _normalise(record["content"])
        if text.strip():
            counts["with_content"] += 1
        for i, pattern in enumerate(patterns):
            removed = pattern.findall(text) if pattern.search(text) else []
            if removed:
                counts[f"pattern_{i}"] += 1
                if show and shown < limit:
                    print(f"line {line}: pattern {i} removes {removed!r}")
                    shown += 1
        cleaned = clean_text(record["content"])
        hit = _SUSPICIOUS.search(cleaned) or _SUSPICIOUS.search(clean_title(str(record.get("title", ""))))
        if hit:
            counts["leftovers"] += 1
            if show:
                print(
                    f"line {line}: left after cleaning: {cleaned[max(0, hit.start() - 60) : hit.end() + 60]!r}"
                )
    return counts


if __name__ == "__main__":  # python -m rag.audit CATALOG [--show]
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m rag.audit",
        description="Audit boilerplate removal on a catalog file: what each pattern removes, what is left.",
    )
    parser.add_argument("path", help="catalog file (JSON lines or JSON array, optionally .gz)")
    parser.add_argument(
        "--show", action="store_true", help="print removals and leftovers (real catalog text)"
    )
    options = parser.parse_args()
    print(json.dumps(audit(options.path, show=options.show), indent=2))
