"""Grounding check: which answer sentences does no retrieved row support?

A sentence is supported when enough of its content words (lower-cased, stop words removed) appear
in one retrieved row's title + description. Citation markers like [1] are ignored.
"""
from __future__ import annotations

import re
from typing import Sequence

from rag.types import Hit

_WORD = re.compile(r"[\w']+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9À-Ý])")
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
STOP_WORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being this that these those
    it its it's he she they them his her their we you your i me my our not no so than then there here what which who
    whom whose when where why how about into over under up down out do does did has have had can could will would
    should may might must also just only very more most such any all some each other both either neither one two
    o a os as um uma de do da dos das e é em no na nos nas por para com que se seu sua""".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in (m.group(0).lower().strip("'") for m in _WORD.finditer(text)) if w and w not in STOP_WORDS}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def unsupported_sentences(answer: str, hits: Sequence[Hit], *, min_overlap: float = 0.5) -> list[str]:
    """Sentences of `answer` whose content words overlap no retrieved row by at least `min_overlap`."""
    rows = [content_words(f"{h.row.title} {h.row.content}") for h in hits]
    out = []
    for sentence in split_sentences(answer):
        words = content_words(_CITATION.sub(" ", sentence))
        if len(words) < 3:
            continue  # too short to judge ("I don't know.", "Yes.")
        best = max((len(words & row) / len(words) for row in rows), default=0.0)
        if best < min_overlap:
            out.append(sentence)
    return out
