"""Grounding check: which answer sentences does no retrieved row support?

    python -c "from rag.grounding import unsupported_sentences; help(unsupported_sentences)"

Two measures, usable alone or together:

- lexical (default, no model): a sentence is supported when at least `min_overlap` of its content
  words (lower-cased, stop words removed) appear in a row's title + description;
- embedding (optional, pass an `embedder`): a sentence is supported when its embedding's cosine
  similarity to one passage of a row (the title, or one description sentence) reaches
  `min_similarity`. It accepts paraphrases the lexical measure misses ("a memoir of a year in
  Delhi" vs "the author spends a year living in Delhi").

Citations count: a sentence that cites sources ([1], [2, 3]) in the prompt convention of
rag/prompt.py is checked against the rows it cites only, so a wrong citation is flagged; a citation
of a source number that was never given ([7] with 5 sources) always is. Sentences without a
citation are checked against every row. Sentences with fewer than 3 content words are not judged.

Echoes: a sentence whose content words all come from the question (when it is given) and the rows'
TITLES, with nothing from a description, only repeats the question or a title and is unsupported
("City of Djinns: A Year in Delhi [1]." as the answer to "what is City of Djinns about?").

Abstentions ("The sources do not describe X.", "I don't know.", `is_abstention`) are not judged
here: whether a refusal was right depends on whether the sources held the answer, which only the
evaluation knows (rag/evaluation/runner.py counts a refusal when the expected row was among the
sources as not grounded).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from rag.types import Embedder, Hit

_WORD = re.compile(r"[\w']+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9À-Ý])")
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "it's",
        "he",
        "she",
        "they",
        "them",
        "his",
        "her",
        "their",
        "we",
        "you",
        "your",
        "i",
        "me",
        "my",
        "our",
        "not",
        "no",
        "so",
        "than",
        "then",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "about",
        "into",
        "over",
        "under",
        "up",
        "down",
        "out",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "can",
        "could",
        "will",
        "would",
        "should",
        "may",
        "might",
        "must",
        "also",
        "just",
        "only",
        "very",
        "more",
        "most",
        "such",
        "any",
        "all",
        "some",
        "each",
        "other",
        "both",
        "either",
        "neither",
        "one",
        "two",
        "o",
        "a",
        "os",
        "as",
        "um",
        "uma",
        "de",
        "do",
        "da",
        "dos",
        "das",
        "e",
        "é",
        "em",
        "no",
        "na",
        "nos",
        "nas",
        "por",
        "para",
        "com",
        "que",
        "se",
        "seu",
        "sua",
    ]
)
# The fine-tuning data's abstention answers (finetune/data.py imports them as ABSTAIN), by language.
ABSTAIN_TEMPLATES = {
    "en": "The sources do not describe {title}.",
    "pt": "As fontes não descrevem {title}.",
}
# Refusals, matched case-insensitively inside one sentence (curly apostrophes made straight).
_ABSTENTION = re.compile(
    r"\b(?:"
    r"(?:the |these |those )?(?:provided |given |retrieved )?sources? (?:do|does|did) not\b"
    r"|(?:the |these |those )?(?:provided |given |retrieved )?sources? (?:don't|doesn't|didn't|say nothing|contain no)\b"
    r"|i could not find|i couldn't find|i cannot find|i can't find|i did not find|i didn't find"
    r"|i do not know|i don't know|i dont know"
    r"|not (?:mentioned|described|given|stated|found) in the (?:provided |given |retrieved )?sources"
    r"|no information"
    r"|(?:as |estas |essas )?fontes n[ãa]o"
    r"|n[ãa]o sei\b|n[ãa]o encontrei|nenhuma informa[çc][ãa]o|n[ãa]o h[áa] informa[çc]"
    r")",
    re.IGNORECASE | re.UNICODE,
)
MIN_WORDS = 3  # shorter sentences ("I don't know.", "Yes [1].") are not judged
MAX_PASSAGES_PER_ROW = 40  # embedding mode: bounds the cost of very long descriptions

GroundingMode = Literal["lexical", "embedding", "either"]


def content_words(text: str) -> set[str]:
    return {
        w for w in (m.group(0).lower().strip("'") for m in _WORD.finditer(text)) if w and w not in STOP_WORDS
    }


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def is_abstention_sentence(sentence: str) -> bool:
    """True when the sentence refuses or says the sources lack the answer ("I don't know", "As fontes não ...")."""
    text = sentence.replace("\u2019", "'").replace("\u2018", "'")
    return _ABSTENTION.search(text) is not None


def is_abstention(text: str) -> bool:
    """True when the answer is a refusal: its first sentence is one.

    Recognises the fine-tuning data's abstentions (`ABSTAIN_TEMPLATES`: "The sources do not describe
    X." / "As fontes não descrevem X."), the extractive answerer's "I could not find a product in the
    catalog ..." and generic refusals ("I don't know", "I do not know", "not mentioned in the
    sources", "no information", "não sei", "as fontes não ...", "the sources do not ...").
    An answer that states something first and refuses a detail later ("X is by Kerr [1]. The
    sources do not give its price.") is not an abstention. An empty answer is not one either.
    """
    sentences = split_sentences(text or "")
    return bool(sentences) and is_abstention_sentence(sentences[0])


_MASK = {".": "\ue000", "!": "\ue001", "?": "\ue002"}
_UNMASK = str.maketrans({v: k for k, v in _MASK.items()})


def split_answer(text: str, titles: Sequence[str] = ()) -> list[str]:
    """`split_sentences`, except that a title quoted in the answer is never cut in two.

    Titles hold sentence marks ("The Kitchen Diaries II: A Year of Simple Suppers. Nigel Slater",
    "Oscar Wilde vs. John Douglas", "Su Doku: Bk. 3"); cut there, a title's head would stand as a
    sentence of its own and be judged as a title echo.
    """
    masked = text
    for title in sorted({t for t in titles if t and any(m in t for m in _MASK)}, key=len, reverse=True):
        pattern = re.compile(re.escape(title), re.IGNORECASE)
        masked = pattern.sub(lambda m: "".join(_MASK.get(ch, ch) for ch in m.group(0)), masked)
    return [s.translate(_UNMASK) for s in split_sentences(masked)]


def cited_numbers(text: str) -> list[int]:
    """Source numbers cited in `text`, in order of first appearance: "[2] ... [1, 3]" -> [2, 1, 3]."""
    out: list[int] = []
    for match in _CITATION.finditer(text):
        for part in match.group(1).split(","):
            number = int(part)
            if number not in out:
                out.append(number)
    return out


def cited_sources(answer: str, hits: Sequence[Hit]) -> list[Hit]:
    """The retrieved rows the answer cites (valid numbers only), in order of first citation."""
    return [hits[n - 1] for n in cited_numbers(answer) if 1 <= n <= len(hits)]


def _row_text(hit: Hit) -> str:
    return f"{hit.row.title} {hit.row.content}"


def _row_passages(hit: Hit) -> list[str]:
    passages = [hit.row.title, *split_sentences(hit.row.content)]
    return [p for p in passages if p.strip()][:MAX_PASSAGES_PER_ROW]


def unsupported_sentences(
    answer: str,
    hits: Sequence[Hit],
    *,
    min_overlap: float = 0.5,
    embedder: Embedder | None = None,
    min_similarity: float = 0.55,
    mode: GroundingMode | None = None,
    check_citations: bool = True,
    question: str | None = None,
) -> list[str]:
    """Sentences of `answer` that no retrieved row supports.

    A sentence made only of words of `question` and of the rows' titles is unsupported (it repeats
    the question or a title and states nothing from a description); abstention sentences
    (`is_abstention_sentence`) are not judged.

    mode: "lexical" (word overlap >= min_overlap), "embedding" (cosine >= min_similarity; needs
    `embedder`) or "either" (supported by one or the other). Default: "either" when an embedder is
    given, else "lexical". With check_citations, a sentence that cites sources is judged against
    the cited rows only (and is unsupported when it cites a number beyond the sources given).
    """
    if mode is None:
        mode = "either" if embedder is not None else "lexical"
    if mode not in ("lexical", "embedding", "either"):
        raise ValueError(f"grounding mode must be 'lexical', 'embedding' or 'either', got {mode!r}")
    if mode != "lexical" and embedder is None:
        raise ValueError(f"grounding mode {mode!r} needs an embedder (e.g. the index's query embedder)")
    hits = list(hits)
    row_words = [content_words(_row_text(h)) for h in hits]
    echo_words = set().union(*(content_words(h.row.title) for h in hits)) if hits else set()
    if question:
        echo_words |= content_words(question)

    judged: list[tuple[str, list[int]]] = []  # sentence, rows to check against (indices)
    out: list[str] = []
    sentences = split_answer(answer, [h.row.title for h in hits])
    for sentence in sentences:
        words = content_words(_CITATION.sub(" ", sentence))
        if len(words) < MIN_WORDS or is_abstention_sentence(sentence):
            continue
        if words <= echo_words:
            out.append(sentence)  # only repeats the question or a title
            continue
        rows = list(range(len(hits)))
        if check_citations:
            numbers = cited_numbers(sentence)
            if any(n < 1 or n > len(hits) for n in numbers):
                out.append(sentence)  # cites a source that was never given: fabricated
                continue
            if numbers:
                rows = [n - 1 for n in numbers]
        judged.append((sentence, rows))

    lexical_ok: dict[int, bool] = {}
    for i, (sentence, rows) in enumerate(judged):
        words = content_words(_CITATION.sub(" ", sentence))
        # Cited rows are pooled: "by Kerr [2] and Rowling [3]" draws on both.
        pool = set().union(*(row_words[r] for r in rows)) if rows else set()
        lexical_ok[i] = bool(words) and len(words & pool) / len(words) >= min_overlap

    embedding_ok: dict[int, bool] = {}
    if mode != "lexical" and judged and hits:
        assert embedder is not None
        embedding_ok = _embedding_support(judged, hits, embedder, min_similarity)

    for i, (sentence, _) in enumerate(judged):
        if mode == "lexical":
            ok = lexical_ok[i]
        elif mode == "embedding":
            ok = embedding_ok.get(i, False)
        else:
            ok = lexical_ok[i] or embedding_ok.get(i, False)
        if not ok:
            out.append(sentence)
    # Report in the answer's order.
    order = {s: n for n, s in enumerate(sentences)}
    return sorted(out, key=lambda s: order.get(s, 0))


def _embedding_support(
    judged: list[tuple[str, list[int]]], hits: list[Hit], embedder: Embedder, min_similarity: float
) -> dict[int, bool]:
    """For each judged sentence: is its best cosine against a passage of its rows >= min_similarity?"""
    passages: list[str] = []
    owner: list[int] = []  # row index of each passage
    for r, hit in enumerate(hits):
        for passage in _row_passages(hit):
            passages.append(passage)
            owner.append(r)
    if not passages:
        return {}
    sentences = [_CITATION.sub(" ", s).strip() for s, _ in judged]
    vectors = np.asarray(embedder.embed(sentences + passages), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.maximum(norms, 1e-12)  # embedders should normalise; be safe anyway
    sims = vectors[: len(sentences)] @ vectors[len(sentences) :].T
    owners = np.asarray(owner)
    result: dict[int, bool] = {}
    for i, (_, rows) in enumerate(judged):
        mask = np.isin(owners, rows)
        result[i] = bool(mask.any() and float(sims[i][mask].max()) >= min_similarity)
    return result


# --------------------------------------------------------------------------- answer type

_ASKS_COUNT = re.compile(r"\b(how many|how old|at what age|quant[oa]s|quantas|que idade)\b", re.IGNORECASE)
_ASKS_YEAR = re.compile(
    r"\b(what year|which year|in what year|when (?:was|were|did|is)|em que ano|que ano|quando)\b",
    re.IGNORECASE,
)
_HAS_NUMBER = re.compile(
    r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|dozen|hundred|"
    r"thousand|um|uma|dois|duas|três|cem|mil)\b",
    re.IGNORECASE,
)
_HAS_YEAR = re.compile(r"\b(1\d\d\d|20\d\d)s?\b|\b(century|século|decade)\b", re.IGNORECASE)


def missing_answer_type(question: str, answer: str) -> str | None:
    """ "count" when a how-many question gets an answer with no number, "year" when a when/what-year
    question gets no year; None otherwise (other questions are not judged)."""
    if _ASKS_COUNT.search(question) and not _HAS_NUMBER.search(_CITATION.sub(" ", answer)):
        return "count"
    if _ASKS_YEAR.search(question) and not _HAS_YEAR.search(answer):
        return "year"
    return None


_NUMBER_WORDS = frozenset(
    [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "hundred",
        "thousand",
        "million",
        "um",
        "uma",
        "dois",
        "duas",
        "três",
        "quatro",
        "cinco",
        "seis",
        "sete",
        "oito",
        "nove",
        "dez",
        "onze",
        "doze",
        "vinte",
        "cem",
        "cento",
        "mil",
    ]
)
_KEY_TOKEN = re.compile(r"\b[A-Z\u00c0-\u00de][\w'\u2019-]+|\b\d[\d,.]*\b")


def _plain_words(text: str) -> set[str]:
    return {w.strip(".,;:!?'\"()[]").lower() for w in _CITATION.sub(" ", text).split()} - {""}


def key_facts(reference: str, question: str) -> set[str]:
    """What an extractive answer states that the question does not: its numbers, number words and
    capitalised words (names, places, awards; not a sentence's first word), lower-cased. The "Title [n]:" lead, the citations and
    the "Other close matches" tail are left out."""
    body = reference.split("]:", 1)[1] if "]:" in reference[:400] else reference
    body = _CITATION.sub(" ", body.split(" Other close matches:", 1)[0])
    found: set[str] = set()
    for m in _KEY_TOKEN.finditer(body):
        before = body[: m.start()].rstrip()
        if m.group(0)[0].isdigit() or (before and before[-1] not in ".!?:;\"'\u201c"):
            found.add(m.group(0).strip(".,").lower())  # a sentence's first word is capitalised anyway
    found |= _plain_words(body) & _NUMBER_WORDS
    return found - _plain_words(question)


def agreement(answer: str, reference: str, question: str) -> float:
    """The share of the reference answer's `key_facts` that `answer` also states (1.0 when the
    reference states none): an LLM answer that quotes the wrong sentence of the right row shares
    few of them, though each of its sentences is grounded."""
    keys = key_facts(reference, question)
    if not keys:
        return 1.0
    return len(keys & _plain_words(answer)) / len(keys)
