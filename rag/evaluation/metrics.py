"""Metrics written out in full (no evaluation library): recall@k, MRR, ROUGE-L, must_contain, percentiles.

must_contain ignores the facts a question already states (`needles_to_check`): an answer that only
repeats the question must not pass.

    python -c "from rag.evaluation.metrics import rouge_l; print(rouge_l('a cat sat', 'the cat sat down'))"

Ranks are 1-based; `None` means the expected row was not retrieved at all.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

_TOKEN = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower-case, HTML entities decoded (up to three rounds, as the catalog cleaner does), NFKC, single spaces.

    must_contain matching uses this on both sides, so "Kerr&#8217;s" in a raw answer and "Kerr's" in
    a question file compare equal, and curly quotes match straight ones.
    """
    from rag.cleaning import decode_entities

    text = decode_entities(text)
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2013", "-").replace("\u2014", "-")
    return " ".join(text.casefold().split())


def contains_all(answer: str, needles: Sequence[str]) -> bool:
    """True when every needle occurs in the answer (case-insensitive, entities decoded). No needles: True."""
    haystack = normalise(answer)
    return all(normalise(n) in haystack for n in needles if n.strip())


def contains_share(answer: str, needles: Sequence[str]) -> float:
    """Share of the needles found in the answer (1.0 when there are none)."""
    needles = [n for n in needles if n.strip()]
    if not needles:
        return 1.0
    haystack = normalise(answer)
    return sum(normalise(n) in haystack for n in needles) / len(needles)


def needles_to_check(question: str, needles: Sequence[str]) -> list[str]:
    """The needles the question does not already contain (normalised on both sides).

    An answer that repeats the question would "contain" a fact the question states, so such facts
    prove nothing and are not checked.
    """
    asked = normalise(question)
    return [n for n in needles if n.strip() and normalise(n) not in asked]


def must_contain(answer: str, needles: Sequence[str], question: str | None = None) -> bool | None:
    """Does the answer state every needle the question does not already contain?

    None when there is nothing to check: no needles, or every needle is in the question (the
    question is then "skipped" for must_contain). Without a question every needle is checked.
    """
    needles = [n for n in needles if n.strip()]
    if question is not None:
        needles = needles_to_check(question, needles)
    if not needles:
        return None
    return contains_all(answer, needles)


def recall_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Share of questions whose expected row is within the top k (rank <= k)."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if not ranks:
        return float("nan")
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def mrr(ranks: Sequence[int | None]) -> float:
    """Mean reciprocal rank; a row not retrieved counts 0 (so MRR is computed "at" the retrieval depth)."""
    if not ranks:
        return float("nan")
    return sum(1.0 / r for r in ranks if r is not None and r > 0) / len(ranks)


def tokens(text: str) -> list[str]:
    """Word tokens for ROUGE: normalised text split on non-word characters."""
    return _TOKEN.findall(normalise(text))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time and O(len(b)) memory."""
    if not a or not b:
        return 0
    if len(b) > len(a):  # keep the row short
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            current[j] = previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str, *, beta: float = 1.0, max_tokens: int = 400) -> float:
    """ROUGE-L F-measure of `candidate` against `reference` (sentence-level LCS over word tokens).

    Both texts are clipped to `max_tokens` words: gold descriptions can run to thousands of words and
    an answer is a few sentences, so the clip keeps the O(n*m) LCS cheap without changing the scores
    of normal answers. beta = 1 weighs precision and recall equally.
    """
    cand, ref = tokens(candidate)[:max_tokens], tokens(reference)[:max_tokens]
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    b2 = beta * beta
    return (1 + b2) * precision * recall / (recall + b2 * precision)


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return float("nan")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    position = (len(data) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


def mean(values: Iterable[float]) -> float:
    data = [v for v in values if v is not None and not math.isnan(v)]
    return sum(data) / len(data) if data else float("nan")
