"""From a free-form question to the title it is about.

Users ask "tell me about the book City of Djinns", "do que se trata o livro Mog's Kittens?",
"mogs kittens", or a follow-up "who wrote it?". Titles are what the index holds, so the retriever
embeds the *title query*: quoted text when there is some, otherwise the question with its question
words ("what is", "who wrote", "quem escreveu", ...) stripped. A title query left empty (or only
pronouns) marks a follow-up about the product already under discussion.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{2,200})[\"“”«»]|(?<![\w])'([^']{3,200})'(?![\w])")

# Longest phrases first: they are removed from the start of the question (and a few from the end).
_LEADING = [
    # English
    "can you tell me about",
    "could you tell me about",
    "tell me more about",
    "tell me about",
    "i want to know about",
    "what can you tell me about",
    "give me a summary of",
    "summarize",
    "summarise",
    "describe",
    "description of",
    "what is the book",
    "what is the movie",
    "what is the film",
    "what is the album",
    "what's the book",
    "what is",
    "what's",
    "what are",
    "who wrote",
    "who is the author of",
    "who's the author of",
    "who made",
    "who directed",
    "who sang",
    "who is",
    "who are",
    "is there",
    "do you have",
    "do you know",
    "have you got",
    "search for",
    "find me",
    "find",
    "look up",
    "show me",
    "i'm looking for",
    "i am looking for",
    "looking for",
    "how is",
    "how good is",
    "is",
    "does",
    "the plot of",
    "the story of",
    "the author of",
    "about",
    # Portuguese
    "do que se trata o livro",
    "do que se trata o filme",
    "do que se trata o disco",
    "do que se trata a",
    "do que se trata o",
    "do que se trata",
    "sobre o que é o livro",
    "sobre o que é o",
    "sobre o que é a",
    "sobre o que é",
    "o que é o livro",
    "o que é o",
    "o que é a",
    "o que é",
    "quem escreveu o livro",
    "quem escreveu o",
    "quem escreveu a",
    "quem escreveu",
    "quem é o autor de",
    "quem é o autor do",
    "quem é a autora de",
    "me fale sobre o livro",
    "me fale sobre o",
    "me fale sobre a",
    "me fale sobre",
    "fale sobre o",
    "fale sobre a",
    "fale sobre",
    "me conte sobre",
    "descreva o",
    "descreva a",
    "descreva",
    "resuma o",
    "resuma",
    "você conhece o",
    "você tem o",
    "procuro o",
    "procuro",
]
_ARTICLES_AFTER = [
    "the book",
    "the novel",
    "the movie",
    "the film",
    "the dvd",
    "the album",
    "the cd",
    "the toy",
    "the product",
    "the item",
    "the game",
    "this book",
    "book",
    "novel",
    "movie",
    "film",
    "album",
    "o livro",
    "a obra",
    "o filme",
    "o disco",
    "livro",
    "filme",
    "disco",
]
_TRAILING = [
    "about",
    "is about",
    "all about",
    "for",
    "good",
    "any good",
    "worth reading",
    "worth it",
    "trata",
    "se trata",
    "is it for kids",
    "for kids",
    "for children",
    "por favor",
    "please",
]
_TRAILING_PATTERNS = [
    r"\s+(?:is\s+)?(?:about|for)$",
    r"\s+(?:written|made|directed|sung)\s+by$",
    r"\s+by$",
    r"\s+author$",
]
FOLLOWUP_WORDS = frozenset(
    [
        "it",
        "its",
        "it's",
        "this",
        "that",
        "these",
        "those",
        "they",
        "them",
        "he",
        "she",
        "him",
        "her",
        "one",
        "the",
        "book",
        "movie",
        "film",
        "album",
        "product",
        "item",
        "series",
        "and",
        "also",
        "so",
        "then",
        "ele",
        "ela",
        "dele",
        "dela",
        "isso",
        "esse",
        "essa",
        "este",
        "esta",
        "e",
        "o",
        "a",
        "os",
        "as",
        "livro",
        "filme",
        "disco",
        "produto",
    ]
)


def _fold(text: str) -> str:
    if not text.isascii():  # ASCII is NFKC-invariant and has no curly quotes
        text = unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'")
    return " ".join(text.split())  # = re.sub(r"\s+", " ", text).strip(): both use str.isspace


@dataclass
class ParsedQuestion:
    question: str
    title_query: str  # what to look up in the title index ("" for a follow-up)
    quoted: bool  # the user quoted a title
    followup: bool  # nothing left that names a product: refers back to the conversation


def parse_question(question: str) -> ParsedQuestion:
    text = _fold(question)
    quoted = _QUOTED.search(text)
    if quoted:
        title = (quoted.group(1) or quoted.group(2)).strip()
        return ParsedQuestion(question, title, True, False)
    core = text.rstrip(" ?!.。？").strip()
    lowered = core.lower()
    changed = True
    while changed:  # peel leading question phrases, then articles ("what is the book X")
        changed = False
        for phrase in _LEADING + _ARTICLES_AFTER:
            if lowered.startswith(phrase + " ") or lowered == phrase:
                core = core[len(phrase) :].strip(" ,:;-")
                lowered = core.lower()
                changed = True
                break
    for pattern in _TRAILING_PATTERNS:
        core = re.sub(pattern, "", core, flags=re.IGNORECASE).strip()
    lowered = core.lower()
    for phrase in sorted(_TRAILING, key=len, reverse=True):
        if lowered.endswith(" " + phrase):
            core = core[: -len(phrase) - 1].strip(" ,")
            lowered = core.lower()
    words = re.findall(r"[\w']+", lowered)
    followup = not words or all(w in FOLLOWUP_WORDS for w in words)
    return ParsedQuestion(question, "" if followup else core, False, followup)


_TOKEN = re.compile(r"[a-z0-9à-ÿ]+")


def normalize_for_match(text: str) -> str:
    """Lower-case, fold accents and apostrophes ("Mog's" -> "mogs"), keep letters and digits."""
    if text.isascii():  # most titles: no accents to fold, and the tokens ignore whitespace runs
        return " ".join(_TOKEN.findall(text.lower().replace("'", "")))
    text = _fold(text).lower().replace("'", "")
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(_TOKEN.findall(text))


def _trigram_tuples(text: str) -> set[tuple[str, str, str]]:
    """The character trigrams of the text padded with two spaces before and one after, as tuples
    (built by zip in C, ~3x faster than slicing)."""
    padded = f"  {text} "
    return set(zip(padded, padded[1:], padded[2:], strict=False))  # the shorter slices end it


class TitleMatcher:
    """`title_similarity(query, title)` for one query against many titles: the query is analysed once.

    Retrieval scores every candidate (~50-70 a question) against the same query; analysing the
    query per candidate was most of the fusion step's time.
    """

    def __init__(self, query: str) -> None:
        self.query = normalize_for_match(query)
        self.grams = _trigram_tuples(self.query)
        self.words = set(self.query.split())

    def __call__(self, title: str) -> float:
        q, t = self.query, normalize_for_match(title)
        if not q or not t:
            return 0.0
        if q == t:
            return 1.0
        qg, tg = self.grams, _trigram_tuples(t)
        shared = len(qg & tg)
        gram_cover = shared / len(qg)
        gram_jaccard = shared / (len(qg) + len(tg) - shared)
        word_cover = len(self.words & set(t.split())) / len(self.words)
        return 0.45 * gram_cover + 0.25 * gram_jaccard + 0.30 * word_cover


def title_similarity(query: str, title: str) -> float:
    """Lexical similarity in [0, 1] between a title query and a title, tolerant to typos.

    The share of the query's character trigrams found in the title (so a query that is part of a
    long title still scores high), blended with whole-word coverage.
    """
    return TitleMatcher(query)(title)


# Words that name what is asked, not which product: never part of a product's name.
_ASKING_WORDS = frozenset(
    [
        "who",
        "whom",
        "whose",
        "what",
        "which",
        "when",
        "where",
        "why",
        "how",
        "many",
        "much",
        "wrote",
        "write",
        "written",
        "author",
        "authors",
        "book",
        "books",
        "about",
        "tell",
        "describe",
        "year",
        "published",
        "publish",
        "first",
        "pages",
        "page",
        "set",
        "award",
        "won",
        "win",
        "prize",
        "kind",
        "type",
        "ages",
        "age",
        "old",
        "made",
        "make",
        "created",
        "illustrated",
        "illustrator",
        "directed",
        "director",
        "sang",
        "composed",
        "edition",
        "language",
        "series",
        "product",
        "title",
        "is",
        "was",
        "does",
        "did",
        "quem",
        "qual",
        "quais",
        "quando",
        "onde",
        "porque",
        "quantos",
        "quantas",
        "escreveu",
        "autor",
        "autora",
        "livro",
        "sobre",
        "ano",
        "publicado",
        "primeira",
        "páginas",
        "prémio",
        "prêmio",
        "ganhou",
        "idade",
        "idades",
        "feito",
        "criou",
        "ilustrou",
        "fale",
        "diga",
        "descreva",
        "trata",
        "foi",
        "tem",
    ]
)
_NAME_WORD = re.compile(r"[\w'’-]+", re.UNICODE)


def product_name_words(question: str) -> set[str]:
    """Capitalised words of the question past its first word that can be part of a product's name.

    "Who wrote The Clockmaker of Tallinn?" -> {"clockmaker", "tallinn"}. The first word is skipped
    (every question starts with a capital), and so are words that only say what is asked.
    """
    from rag.grounding import STOP_WORDS

    out: set[str] = set()
    for match in _NAME_WORD.finditer(question):
        word = match.group(0)
        if match.start() == 0 or not word[0].isupper():
            continue
        folded = word.lower().strip("'’-")
        if len(folded) > 1 and folded not in _ASKING_WORDS and folded not in STOP_WORDS:
            out.add(folded)
    return out


def named_product_coverage(question: str, texts: list[str]) -> float | None:
    """Share of the product-name words of `question` found in `texts` (the top rows' title + description).

    None when the question names fewer than two such words (a described product, a follow-up): the
    check does not apply. A question about a product the catalog does not hold ("Who wrote The
    Clockmaker of Tallinn?") scores near 0 even when retrieval, which always returns its nearest rows,
    scores them high; docs/evaluation.md gives the figures.
    """
    from rag.grounding import content_words

    names = product_name_words(question)
    if len(names) < 2:
        return None
    words: set[str] = set()
    for text in texts:
        words |= content_words(text)
    return len(names & words) / len(names)
