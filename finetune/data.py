"""Catalog rows -> RAFT-style question/context/answer examples for fine-tuning.

    rag finetune data --config configs/tiny-cpu.yaml --out runs/tiny-cpu/examples.jsonl

One example per selected product (row):
- question: from templates (describe it / what is it about / who is it for / who wrote or made it),
  a share of them in Portuguese ("Do que se trata o livro X?", "Quem escreveu X?");
- context: the top-k rows the project's own retriever returns for that question. With probability
  `finetune.examples.gold_probability` the product's own ("gold") row is in it, at a random position;
  the others are distractors, exactly what serving would show next to it;
- prompt: `rag.prompt.build_messages(question, context, config.prompt)`, the function serving uses,
  so the model is trained on the prompt it will see;
- answer: the gold description cut at a sentence boundary within `answer_max_tokens`, ending with
  the gold row's citation marker ("[2]"). When the gold row is left out the answer is a short
  abstention ("The sources do not describe X."), not the description: the serving prompt tells the
  model to answer from the sources only, and training it to recite descriptions it was not shown
  would teach it to invent (docs/finetune.md, "Examples", explains the choice against RAFT's).

Products are split into train/validation BY uid before any example is made, so no product (and no
paraphrase of its description) is in both splits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.config import Config
from rag.grounding import ABSTAIN_TEMPLATES as ABSTAIN
from rag.prompt import build_messages, defang_special_tokens
from rag.types import CatalogRow

log = logging.getLogger(__name__)

Retrieve = Callable[[str, int], list[CatalogRow]]
CountTokens = Callable[[str], int]

# (kind, language, template). `{title}` is the product title as the catalog spells it.
QUESTION_TEMPLATES: list[tuple[str, str, str]] = [
    ("describe", "en", "Describe {title}."),
    ("describe", "en", "Can you tell me about {title}?"),
    ("about", "en", "What is {title} about?"),
    ("about", "en", 'What is the product "{title}"?'),
    ("audience", "en", "Who is {title} for?"),
    ("author", "en", "Who wrote or made {title}?"),
    ("author", "en", "Who is the author of {title}?"),
    ("when", "en", "When was {title} published?"),
    ("when", "en", "In what year did {title} come out?"),
    ("count", "en", "How many pages does {title} have?"),
    ("count", "en", "How many {noun} does {title} have?"),
    ("count", "en", "How many {noun} are in {title}?"),
    ("when", "en", "What year is mentioned in the description of {title}?"),
    ("when", "en", "When did the events of {title} happen, or when was it made?"),
    ("award", "en", "What award did {title} win?"),
    ("award", "en", "Which prize is mentioned for {title}?"),
    ("where", "en", "Where is {title} set?"),
    ("where", "en", "In what place does {title} take place?"),
    ("describe", "pt", "Descreva {title}."),
    ("about", "pt", "Do que se trata o livro {title}?"),
    ("about", "pt", "O que é {title}?"),
    ("audience", "pt", "Para quem é {title}?"),
    ("author", "pt", "Quem escreveu {title}?"),
    ("author", "pt", "Quem é o autor de {title}?"),
    ("when", "pt", "Em que ano foi publicado {title}?"),
    ("count", "pt", "Quantas páginas tem {title}?"),
    ("count", "pt", "Quantos {noun} tem {title}?"),
    ("when", "pt", "Quando foi feito {title}?"),
    ("award", "pt", "Que prémio ganhou {title}?"),
    ("where", "pt", "Onde se passa {title}?"),
]

# A fact question is asked only about a product whose description states that kind of fact, so the
# target answers it (the other kinds fit any description).
_YEAR = re.compile(r"\b(1[5-9]\d\d|20[0-3]\d)\b")
_PAGES = re.compile(r"\b\d[\d,]*\s*(?:-\s*)?pages?\b", re.IGNORECASE)
# "more than 270 recipes", "75 color photographs", "50 photojournalists": a number, at most one
# adjective, a plural noun (not a unit of time or money, which "how many" rarely asks about)
_COUNTED = re.compile(
    r"\b(?!(?:1[5-9]|20)\d\d\b)(\d[\d,]*)\s+(?:[a-z-]{3,}\s+)?"
    r"((?!(?:years|months|weeks|days|hours|minutes|seconds|dollars|cents|times|pounds|miles|inches|"
    r"feet|seems|goes|was)\b)[a-z]{3,}s)\b"
)
_AWARD = re.compile(r"\b(award|prize|medal|winner of|won the)\b", re.IGNORECASE)
_SETTING = re.compile(r"\b(set in|takes place in|set on|set during)\b", re.IGNORECASE)
_AUTHOR_PATTERNS = [
    re.compile(
        r"\b(?:written|illustrated|edited|compiled|directed|created|told|narrated|photographed)?\s*by\s+"
        r"((?:[A-Z][a-zA-Z'’.-]+\s+){1,3}[A-Z][a-zA-Z'’-]+)"
    ),
    re.compile(r"((?:[A-Z][a-zA-Z'’.-]+\s+){1,2}[A-Z][a-zA-Z-]+)(?:'s|’s)\s"),
    re.compile(
        r"((?:[A-Z][a-zA-Z'’.-]+\s+){1,2}[A-Z][a-zA-Z'’-]+),?\s+(?:is|was)\s+(?:the|an?|one of)\b[^.]{0,40}?"
        r"\b(?:author|writer|novelist|journalist|poet|illustrator|historian|editor|chef|photographer)"
    ),
]
_NOT_NAMES = frozenset(
    [
        "The",
        "This",
        "That",
        "These",
        "Those",
        "It",
        "Its",
        "In",
        "On",
        "At",
        "For",
        "From",
        "With",
        "And",
        "But",
        "When",
        "Where",
        "What",
        "Who",
        "How",
        "A",
        "An",
        "New",
        "York",
        "Times",
        "USA",
        "Today",
        "Publishers",
        "Weekly",
        "Booklist",
        "Library",
        "Journal",
        "Kirkus",
        "Reviews",
    ]
)


def author_name(text: str) -> str | None:
    """The first person a description names as author/maker ("... a novel by Eleanor Whitcombe" ->
    "Eleanor Whitcombe"), by rules; None when no pattern matches."""
    found: list[tuple[int, str]] = []
    for pattern in _AUTHOR_PATTERNS:
        for match in pattern.finditer(text):
            name = match.group(1).strip(" .")
            words = name.split()
            if len(words) < 2 or words[0] in _NOT_NAMES or words[-1] in _NOT_NAMES:
                continue
            found.append((match.start(1), name))
            break
    return min(found)[1] if found else None


def question_kinds(content: str) -> set[str]:
    """The question kinds a description can answer."""
    kinds = {"describe", "about", "audience"}
    if author_name(content):
        kinds.add("author")
    if _YEAR.search(content):
        kinds.add("when")
    if _PAGES.search(content) or _COUNTED.search(content):
        kinds.add("count")
    if _AWARD.search(content):
        kinds.add("award")
    if _SETTING.search(content):
        kinds.add("where")
    return kinds


def fill_template(template: str, title: str, content: str) -> str | None:
    """The question text; None when a `{noun}` template finds nothing counted in the description."""
    if "{noun}" in template:
        match = _COUNTED.search(content)
        if match is None:
            return None
        return template.format(title=title, noun=match.group(2).lower())
    if ("pages" in template or "páginas" in template) and not _PAGES.search(content):
        return None
    return template.format(title=title)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Example:
    """One training example; `messages` is the serving prompt, `answer` the assistant turn."""

    uid: str
    split: str  # "train" or "validation"
    question: str
    language: str
    kind: str
    context: list[CatalogRow]
    gold_position: int | None  # 1-based position of the gold row in the context, None if left out
    answer: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "split": self.split,
            "question": self.question,
            "language": self.language,
            "kind": self.kind,
            "gold_position": self.gold_position,
            "context": [r.to_dict() for r in self.context],
            "messages": self.messages,
            "answer": self.answer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        return cls(
            uid=data["uid"],
            split=data["split"],
            question=data["question"],
            language=data["language"],
            kind=data["kind"],
            gold_position=data.get("gold_position"),
            context=[
                CatalogRow(uid=r["uid"], title=r["title"], content=r.get("content", ""))
                for r in data["context"]
            ],
            answer=data["answer"],
            messages=list(data.get("messages", [])),
        )


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters a token) for when no tokenizer is at hand."""
    return max(1, math.ceil(len(text) / 4))


def cut_to_budget(text: str, max_tokens: int, count_tokens: CountTokens = approx_tokens) -> str:
    """The longest run of whole sentences within `max_tokens`; a word-boundary cut if the first is too long."""
    text = " ".join(text.split())
    if count_tokens(text) <= max_tokens:
        return text
    out = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{out} {sentence}".strip()
        if count_tokens(candidate) > max_tokens:
            break
        out = candidate
    if out:
        return out
    # One long first sentence: keep whole words while they fit.
    words = text.split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # binary search for the most words that fit
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid]) + " …") <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]) + " …"


# --------------------------------------------------------------------------- selection and split


def select_rows(rows: Sequence[CatalogRow], config: Config) -> list[CatalogRow]:
    """Rows with a usable description, de-duplicated by uid, shuffled by seed, cut to sample_size."""
    ex = config.finetune.examples
    seen: set[str] = set()
    eligible = []
    for row in rows:
        if row.uid in seen or not ex.min_content_chars <= len(row.content) <= ex.max_content_chars:
            continue
        seen.add(row.uid)
        eligible.append(row)
    eligible.sort(key=lambda r: r.uid)  # input order must not change the sample
    random.Random(config.finetune.training.seed).shuffle(eligible)
    if ex.sample_size is not None:
        eligible = eligible[: ex.sample_size]
    return eligible


def split_by_product(rows: Sequence[CatalogRow], validation_fraction: float, seed: int) -> dict[str, str]:
    """uid -> "train" | "validation"; each uid in exactly one split."""
    uids = sorted({r.uid for r in rows})
    random.Random(seed + 1).shuffle(uids)
    n_val = 0
    if validation_fraction > 0 and len(uids) >= 2:
        n_val = min(len(uids) - 1, max(1, round(validation_fraction * len(uids))))
    return {uid: ("validation" if i < n_val else "train") for i, uid in enumerate(uids)}


# --------------------------------------------------------------------------- retrieval


class LexicalRetriever:
    """Word-overlap title search: the stand-in when no index is wanted (tests, `examples.retriever: lexical`)."""

    _word = re.compile(r"\w+", re.UNICODE)

    def __init__(self, rows: Sequence[CatalogRow]) -> None:
        self.rows = list(rows)
        self.postings: dict[str, list[int]] = {}
        for i, row in enumerate(self.rows):
            for w in set(self._word.findall(row.title.lower())):
                self.postings.setdefault(w, []).append(i)
        n = max(1, len(self.rows))
        self.idf = {w: math.log(1 + n / len(p)) for w, p in self.postings.items()}

    def __call__(self, question: str, k: int) -> list[CatalogRow]:
        scores: defaultdict[int, float] = defaultdict(float)
        for w in set(self._word.findall(question.lower())):
            for i in self.postings.get(w, ()):
                scores[i] += self.idf[w]
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [self.rows[i] for i, _ in best]


def project_retriever(config: Config, data_path: str | Path, run_dir: str | Path) -> Retrieve:
    """The serving retriever (rag.retrieval.Retriever) over an index of `data_path` built in the run dir."""
    from index.build import build_index  # heavy: faiss + the embedder
    from rag.retrieval import Retriever

    local = dataclasses.replace(
        config, index=dataclasses.replace(config.index, path=str(Path(run_dir) / "index"))
    )
    from index.store import IndexStore

    if not IndexStore(local.index.path).has_current():
        build_index(local, [str(data_path)])
    retriever = Retriever.from_config(local)

    def retrieve(question: str, k: int) -> list[CatalogRow]:
        return [hit.row for hit in retriever.search(question, k)]

    return retrieve


# --------------------------------------------------------------------------- examples


def teacher_answer(
    question: str,
    gold: CatalogRow,
    marker: str,
    budget: int,
    count_tokens: CountTokens,
    max_sentences: int = 3,
) -> str:
    """The answer the extractive answerer's sentence choice gives for `question`, fitted to its kind.

    A "who wrote / who made" question gets the name first ("Eleanor Whitcombe [2]. ..."), then the
    description sentences that best fit the question (rag.generators.extractive.pick_sentences: the
    intent's keywords, words shared with the question, position), in their order, within `budget`.
    """
    from rag.generators.extractive import detect_intent, pick_sentences
    from rag.types import Hit

    sentences = pick_sentences(question, Hit(row=gold, score=1.0), max_sentences)
    body = cut_to_budget(" ".join(sentences) or gold.content, budget, count_tokens)
    if detect_intent(question) == "author":
        name = author_name(gold.content)
        if name:
            return f"{name}{marker}. {body}{marker}"
    return f"{body}{marker}"


def make_answer(
    gold: CatalogRow,
    position: int | None,
    language: str,
    config: Config,
    count_tokens: CountTokens,
    question: str = "",
) -> str:
    ex = config.finetune.examples
    if position is None and ex.no_gold_answer == "abstain":
        return defang_special_tokens(ABSTAIN[language].format(title=gold.title))
    marker = f" [{position}]" if ex.cite_sources and position is not None else ""
    budget = max(1, ex.answer_max_tokens - 2 * (count_tokens(marker) if marker else 0))
    if ex.answer_style == "teacher" and question:
        return defang_special_tokens(teacher_answer(question, gold, marker, budget, count_tokens))
    return defang_special_tokens(cut_to_budget(gold.content, budget, count_tokens)) + marker


def make_example(
    gold: CatalogRow,
    split: str,
    rng: random.Random,
    config: Config,
    retrieve: Retrieve,
    pool: Sequence[CatalogRow],
    count_tokens: CountTokens,
) -> Example:
    ex = config.finetune.examples
    k = min(ex.context_k, config.prompt.max_sources)
    language = "pt" if rng.random() < ex.portuguese_fraction else "en"
    fitting = question_kinds(gold.content) if ex.answer_style == "teacher" else None
    candidates = [t for t in QUESTION_TEMPLATES if t[1] == language and (fitting is None or t[0] in fitting)]
    if fitting is None:
        candidates = [t for t in candidates if t[0] in ("describe", "about", "audience", "author")]
    facts = [t for t in candidates if t[0] not in ("describe", "about", "audience")]
    if facts and ex.answer_style == "teacher" and rng.random() < ex.fact_question_share:
        candidates = facts  # the description states a fact: ask about it (users mostly ask facts)
    question = None
    while question is None:
        kind, _, template = rng.choice(candidates)
        question = fill_template(template, gold.title, gold.content)

    include_gold = rng.random() < ex.gold_probability
    retrieved = retrieve(question, k + 1)
    distractors = [r for r in retrieved if r.uid != gold.uid]
    # Small catalogs: top up with random rows so every context has k rows.
    while len(distractors) < k and len(pool) > len(distractors) + 1:
        extra = pool[rng.randrange(len(pool))]
        if extra.uid != gold.uid and all(extra.uid != d.uid for d in distractors):
            distractors.append(extra)
    if include_gold:
        context = distractors[: k - 1]
        position = rng.randint(0, len(context))
        context.insert(position, gold)
        gold_position: int | None = position + 1
    else:
        context = distractors[:k]
        gold_position = None
    answer = make_answer(gold, gold_position, language, config, count_tokens, question)
    messages = build_messages(question, context, config.prompt)
    return Example(gold.uid, split, question, language, kind, context, gold_position, answer, messages)


def build_examples(
    rows: Sequence[CatalogRow],
    config: Config,
    retrieve: Retrieve | None = None,
    count_tokens: CountTokens = approx_tokens,
) -> tuple[list[Example], dict[str, Any]]:
    """Select, split and turn rows into examples; return them with statistics."""
    selected = select_rows(rows, config)
    if not selected:
        ex = config.finetune.examples
        raise ValueError(
            f"no catalog row has a description of {ex.min_content_chars}..{ex.max_content_chars} characters "
            "(finetune.examples.min_content_chars / max_content_chars): nothing to train on"
        )
    splits = split_by_product(
        selected, config.finetune.examples.validation_fraction, config.finetune.training.seed
    )
    retrieve = retrieve or LexicalRetriever(rows)
    rng = random.Random(config.finetune.training.seed)
    examples = [
        make_example(row, splits[row.uid], rng, config, retrieve, rows, count_tokens)
        for _ in range(config.finetune.examples.per_product)
        for row in selected
    ]
    return examples, example_stats(examples, len(rows), len(selected))


def holdout_uids(path: str | Path | None) -> set[str]:
    """uids of the questions marked `"split": "heldout"` in a question file: never trained on."""
    if not path:
        return set()
    from rag.evaluation.questions import load_questions

    return {q.uid for q in load_questions(path) if q.uid and getattr(q, "split", None) == "heldout"}


def _describe(values: list[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pick(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 1),
        "min": ordered[0],
        "p50": pick(0.5),
        "p95": pick(0.95),
        "max": ordered[-1],
    }


def example_stats(examples: Sequence[Example], rows_read: int, rows_selected: int) -> dict[str, Any]:
    by_split = Counter(e.split for e in examples)
    return {
        "rows_read": rows_read,
        "rows_selected": rows_selected,
        "examples": len(examples),
        "split_examples": dict(by_split),
        "split_products": {s: len({e.uid for e in examples if e.split == s}) for s in by_split},
        "gold_in_context": sum(e.gold_position is not None for e in examples),
        "languages": dict(Counter(e.language for e in examples)),
        "question_kinds": dict(Counter(e.kind for e in examples)),
        "answer_chars": _describe([len(e.answer) for e in examples]),
        "prompt_chars": _describe([sum(len(m["content"]) for m in e.messages) for e in examples]),
    }


# --------------------------------------------------------------------------- catalog input


def read_rows(
    path: str | Path, config: Config, rejects_path: str | Path | None = None
) -> tuple[list[CatalogRow], dict[str, Any]]:
    """Read and clean a catalog file with the project's reader; returns rows and the read summary."""
    from rag.catalog import read_catalog

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: catalog file not found (finetune.data); write one with `rag synth --out {path}`"
        )
    rows, summary = read_catalog([path], config.catalog, rejects_path=rejects_path)
    return rows, (summary.to_dict() if hasattr(summary, "to_dict") else dataclasses.asdict(summary))


def write_examples(examples: Iterable[Example], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for e in examples:
            fh.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")
    return path


def read_examples(path: str | Path) -> list[Example]:
    with Path(path).open(encoding="utf-8") as fh:
        return [Example.from_dict(json.loads(line)) for line in fh if line.strip()]


def drop_one_distractor(example: Example, config: Config) -> Example | None:
    """The example with its last distractor removed (to fit max_seq_length); None when none is left.

    The gold row keeps its text; its citation marker follows it if its position moves.
    """
    distractors = [i for i, r in enumerate(example.context) if r.uid != example.uid]
    if not distractors:
        return None
    drop = distractors[-1]
    context = example.context[:drop] + example.context[drop + 1 :]
    position, answer = example.gold_position, example.answer
    if position is not None and drop < position - 1:
        old, position = f" [{position}]", position - 1
        if answer.endswith(old):
            answer = answer[: -len(old)] + f" [{position}]"
    messages = build_messages(example.question, context, config.prompt)
    return dataclasses.replace(
        example, context=context, gold_position=position, answer=answer, messages=messages
    )
