"""The default generator: no model weights, answers with the catalog's own sentences.

It takes the best retrieved row, splits its cleaned description into sentences and keeps the ones
that best fit the question's intent (who wrote it, what it is about, who it is for), in their
original order, citing the row as [1]. When retrieval found nothing convincing it says so plainly.
A request's max_new_tokens cuts the answer after that many tokens of the stated tokenizer
(rag.tokens: the bundled MiniLM's WordPiece), with finish_reason "length".
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from rag.config import Config
from rag.grounding import content_words, split_sentences
from rag.types import GenerationRequest, Hit

_INTENTS: dict[str, tuple[re.Pattern[str], frozenset[str]]] = {
    "author": (
        re.compile(
            r"\b(who (wrote|made|directed|created|sang|composed|illustrated|produced|is the author)|author|writer|"
            r"quem (escreveu|fez|criou|dirigiu)|autor|autora)\b",
            re.IGNORECASE,
        ),
        frozenset(
            [
                "by",
                "author",
                "authors",
                "wrote",
                "written",
                "writer",
                "writes",
                "novelist",
                "illustrated",
                "illustrator",
                "edited",
                "editor",
                "directed",
                "director",
                "composed",
                "composer",
                "performed",
                "band",
                "singer",
                "artist",
                "created",
                "creator",
                "made",
                "maker",
                "manufacturer",
                "brand",
                "novel",
                "poet",
                "journalist",
                "autor",
                "escrito",
            ]
        ),
    ),
    "audience": (
        re.compile(
            r"\b(who('s| is)\b.{0,200}\bfor\b|for (kids|children|adults|teens|beginners|whom)|what age|ages?|suitable|"
            r"para (crianças|quem|adultos)|idade)\b",
            re.IGNORECASE,
        ),
        frozenset(
            [
                "children",
                "kids",
                "child",
                "ages",
                "age",
                "young",
                "readers",
                "reader",
                "adults",
                "adult",
                "teens",
                "teen",
                "toddlers",
                "babies",
                "infants",
                "infant",
                "months",
                "years",
                "beginners",
                "grade",
                "grades",
                "family",
                "families",
                "parents",
                "students",
                "fans",
                "lovers",
                "anyone",
                "everyone",
                "crianças",
                "adultos",
            ]
        ),
    ),
    "price": (
        re.compile(r"\b(price|cost|how much|preço|quanto custa)\b", re.IGNORECASE),
        frozenset(["price", "cost", "priced", "dollars", "value"]),
    ),
}


# The answer when retrieval found nothing above retrieval.min_score (every generator: an LLM with
# no sources could only invent, so rag.pipeline answers this without calling it).
NOT_FOUND_ANSWER = (
    "I could not find a product in the catalog that matches your question. "
    "Try the exact title (in quotes), or describe the product differently."
)

_POSSESSIVE_NAME = re.compile(r"\b[A-Z][a-z]+ [A-Z][a-z]+(?:'s|’s)\s")


def detect_intent(question: str) -> str:
    for name, (pattern, _) in _INTENTS.items():
        if pattern.search(question):
            return name
    return "about"


def pick_sentences(question: str, hit: Hit, max_sentences: int) -> list[str]:
    """The description sentences that best answer `question`, in their original order."""
    sentences = split_sentences(hit.row.content)
    if not sentences:
        return []
    intent = detect_intent(question)
    keywords = _INTENTS[intent][1] if intent in _INTENTS else frozenset()
    title_words = content_words(hit.row.title)
    question_words = content_words(question) - title_words
    scored = []
    for position, sentence in enumerate(sentences):
        words = content_words(sentence)
        score = 0.6 / (1 + position)  # descriptions lead with what the product is
        score += 0.5 * len(words & question_words)
        matched = len(words & keywords)
        if intent == "author" and _POSSESSIVE_NAME.search(sentence):
            matched += 1  # "Judith Kerr's best-selling ..." names the author without saying "by"
        score += 1.5 * matched
        if len(sentence) < 25 and not matched:
            score -= 0.3  # fragments rarely answer alone unless they match the intent ("Ages 3-5.")
        scored.append((score, position, sentence))
    if intent != "about":
        max_sentences = min(max_sentences, 2)  # a focused question gets a focused answer
    best = sorted(scored, key=lambda item: (-item[0], item[1]))[:max_sentences]
    return [sentence for _, _, sentence in sorted(best, key=lambda item: item[1])]


def cut_to_tokens(request: GenerationRequest, text: str) -> str:
    """Honour request.max_new_tokens with the stated tokenizer (rag.tokens): the text cut after that
    many tokens, finish_reason "length" when it was cut ("stop" otherwise), new_tokens its count."""
    if request.max_new_tokens is None:
        return text
    from rag.tokens import stated_tokenizer

    text, count, cut = stated_tokenizer().truncate(text, max(1, int(request.max_new_tokens)))
    request.finish_reason = "length" if cut else "stop"
    request.new_tokens = count
    return text


class ExtractiveGenerator:
    """Answers from the best row's description sentences; needs no LLM."""

    name = "extractive"

    def __init__(self, config: Config | None = None) -> None:
        config = config or Config()
        if config.generator.max_sentences <= 0:
            raise ValueError(f"generator.max_sentences must be > 0, got {config.generator.max_sentences}")
        self.max_sentences = config.generator.max_sentences
        self.min_score = config.retrieval.min_score

    def generate(self, request: GenerationRequest) -> str:
        return cut_to_tokens(request, self._compose(request))

    def reader_answer(self, request: GenerationRequest) -> str:
        """The extractive answer to `request`, uncut and without touching the request's counts."""
        return self._compose(request)

    def _compose(self, request: GenerationRequest) -> str:
        hits = request.hits
        if not hits or hits[0].score < self.min_score:
            return NOT_FOUND_ANSWER
        top = hits[0]
        if not top.row.content:
            text = f'The catalog lists "{top.row.title}" [1] but has no description of it.'
        else:
            sentences = pick_sentences(request.question, top, self.max_sentences)
            top.snippet = " ".join(sentences)
            text = f"{top.row.title} [1]: " + " ".join(sentences)
        close = [
            i
            for i, h in enumerate(hits[1:3], 2)
            if h.score >= top.score - 0.03 and h.row.title != top.row.title
        ]
        if close:
            text += (
                " Other close matches: " + "; ".join(f"{hits[i - 1].row.title} [{i}]" for i in close) + "."
            )
        return text

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        text = self.generate(request)
        for match in re.finditer(r"\S+\s*", text):
            yield match.group(0)
