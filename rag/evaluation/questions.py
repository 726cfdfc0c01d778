"""Evaluation question files (JSON lines) and the generator of title-based question variants.

    rag eval questions --data catalog.jsonl --out questions.jsonl --n 500 --seed 0

One question per line:

    {"qid": "q0001", "question": "who wrote City of Djinns?", "uid": "h:0123456789abcdef",
     "kind": "template_en", "must_contain": ["Dalrymple"]}

* `qid` (unique) and `question` are required; `uid` and/or `title` name the expected product.
  With `uid` a hit counts when its uid matches; with only `title`, when the hit's cleaned title equals
  it case-insensitively (so a question file can be written without knowing the uids).
* `kind` groups the report ("exact", "lowercase", "truncated", "typo", "template_en",
  "template_pt", "described", ...); `must_contain` lists short facts the answer should state.
* `line` (optional): the 1-based line of the product in the catalog file the questions were written
  for; used only when the uid is not in the catalog (the cleaning rules changed the content hash).
* `split` and `language` (optional): which split the question belongs to ("train", "validation",
  "test", ...; `rag eval ... --split NAME` keeps one) and its language ("en", "pt"; the answer
  summary adds a "lang:<code>" group per language).
* kind "absent": a question about a product the catalog does not hold; it names no product (no
  `uid`, no `title`), and a good answer abstains.
* The question may hold a placeholder that is filled from the expected row's title when the
  questions are resolved against a catalog: `{title}`, `{title:lower}`, `{title:trunc}` and
  `{title:typo=SEED}`. A question file for a catalog that may not be copied (the real sample) can
  so reference products by uid alone and carry none of their text.

The generator makes, from each sampled row, one variant of one kind (the kinds cycle): the exact
title, lower case, truncated (subtitle dropped, or the first ~60% of the words), one or two typos
(adjacent characters swapped or one dropped), and English and Portuguese question templates.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.types import CatalogRow

ABSENT_KIND = "absent"  # questions about products the catalog does not hold: no uid, no title
KINDS = ("exact", "lowercase", "truncated", "typo", "template_en", "template_pt")

TEMPLATES_EN = ("What is {t} about?", "Who wrote {t}?", "Tell me about {t}")
TEMPLATES_PT = ("Do que se trata {t}?", "Quem escreveu {t}?", "Me fale sobre {t}")

_PLACEHOLDER = re.compile(r"\{title(?::(lower|trunc|typo=(\d+)))?\}")


class QuestionFileError(ValueError):
    """A question file that cannot be used; the message names the file and line."""


@dataclass
class EvalQuestion:
    """One evaluation question and the product it is about."""

    qid: str
    question: str
    uid: str | None = None
    title: str | None = None
    kind: str = "unknown"
    must_contain: list[str] = field(default_factory=list)
    line: int | None = None
    split: str | None = None
    language: str | None = None
    where: str = ""  # "file:line" for error messages

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"qid": self.qid, "question": self.question}
        if self.uid is not None:
            out["uid"] = self.uid
        if self.title is not None:
            out["title"] = self.title
        out["kind"] = self.kind
        if self.must_contain:
            out["must_contain"] = list(self.must_contain)
        if self.line is not None:
            out["line"] = self.line
        if self.split is not None:
            out["split"] = self.split
        if self.language is not None:
            out["language"] = self.language
        return out

    @property
    def is_absent(self) -> bool:
        """A question about a product that is not in the catalog (kind "absent")."""
        return self.kind == ABSENT_KIND

    @property
    def has_placeholder(self) -> bool:
        return _PLACEHOLDER.search(self.question) is not None


# --------------------------------------------------------------------------- variants


def truncate_title(title: str) -> str:
    """Drop the subtitle (after ':' or ' (' or ' - '), else keep the first ~60% of the words (>= 2).

    Returns "" when nothing shorter and still useful is left (titles of one or two words).
    """
    for mark in (":", " (", " - ", " [", ";"):
        head = title.split(mark, 1)[0].strip()
        if head != title.strip() and len(head.split()) >= 2:
            return head
    words = title.split()
    if len(words) < 3:
        return ""
    return " ".join(words[: max(2, math.ceil(len(words) * 0.6))])


def typo_title(title: str, seed: int, edits: int | None = None) -> str:
    """Deterministic typos: 1-2 edits (swap two adjacent letters, or drop one) inside words of >= 4 letters.

    The first letter of a word is never touched (people rarely get it wrong). Returns the title
    unchanged only when it has no word long enough.
    """
    rng = random.Random(seed)
    words = title.split(" ")
    candidates = [i for i, w in enumerate(words) if sum(ch.isalpha() for ch in w) >= 4]
    if not candidates:
        return title
    edits = edits if edits is not None else (1 if len(title) < 20 else 2)
    for _ in range(edits):
        i = rng.choice(candidates)
        word = words[i]
        positions = [p for p in range(1, len(word) - 1) if word[p].isalpha() and word[p + 1].isalpha()]
        if not positions:
            continue
        p = rng.choice(positions)
        if rng.random() < 0.5 and word[p] != word[p + 1]:
            word = word[:p] + word[p + 1] + word[p] + word[p + 2 :]  # swap
        else:
            word = word[:p] + word[p + 1 :]  # drop
        words[i] = word
    return " ".join(words)


def render_question(text: str, title: str) -> str:
    """Fill `{title}`, `{title:lower}`, `{title:trunc}` and `{title:typo=SEED}` from `title`."""

    def fill(match: re.Match[str]) -> str:
        mode = match.group(1)
        if mode is None:
            return title
        if mode == "lower":
            return title.lower()
        if mode == "trunc":
            return truncate_title(title) or title
        return typo_title(title, int(match.group(2)))

    return _PLACEHOLDER.sub(fill, text)


def _variant(row: CatalogRow, kind: str, rng: random.Random, placeholders: bool) -> tuple[str, str] | None:
    """(question, its template form) for one kind, or None when the kind does not apply to this title."""
    title = row.title
    if kind == "exact":
        form = "{title}"
    elif kind == "lowercase":
        if title.lower() == title:
            return None
        form = "{title:lower}"
    elif kind == "truncated":
        if not truncate_title(title):
            return None
        form = "{title:trunc}"
    elif kind == "typo":
        seed = rng.randrange(1_000_000)
        if typo_title(title, seed) == title:
            return None
        form = f"{{title:typo={seed}}}"
    elif kind == "template_en":
        form = rng.choice(TEMPLATES_EN).replace("{t}", "{title}")
    elif kind == "template_pt":
        form = rng.choice(TEMPLATES_PT).replace("{t}", "{title}")
    else:
        raise ValueError(f"unknown question kind {kind!r}; known kinds: {', '.join(KINDS)}")
    text = render_question(form, title)
    return (form if placeholders else text), text


def generate_questions(
    rows: Sequence[CatalogRow],
    n: int = 500,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    placeholders: bool = False,
    qid_prefix: str = "g",
) -> list[EvalQuestion]:
    """Up to `n` questions from a seeded sample of `rows`, the kinds taken in turn.

    Rows whose title is shared by another row (case-insensitively) are left out: no system can tell
    such rows apart from the title alone, so they would only measure luck. With `placeholders` the
    questions carry `{title...}` forms instead of the title text (see the module docstring).
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown question kind {kind!r}; known kinds: {', '.join(KINDS)}")
    counts: dict[str, int] = {}
    for row in rows:
        key = row.title.casefold()
        counts[key] = counts.get(key, 0) + 1
    unique = [row for row in rows if counts[row.title.casefold()] == 1]
    rng = random.Random(seed)
    order = list(range(len(unique)))
    rng.shuffle(order)
    out: list[EvalQuestion] = []
    turn = 0
    for index in order:
        if len(out) >= n:
            break
        row = unique[index]
        # try the kind whose turn it is, then the others, so short titles still yield a question
        for attempt in range(len(kinds)):
            kind = kinds[(turn + attempt) % len(kinds)]
            made = _variant(row, kind, rng, placeholders)
            if made is not None:
                break
        else:
            continue
        turn += 1
        question, _ = made
        out.append(
            EvalQuestion(
                qid=f"{qid_prefix}{len(out) + 1:05d}",
                question=question,
                uid=row.uid,
                title=None if placeholders else row.title,
                kind=kind,
                line=row.line if placeholders else None,
            )
        )
    return out


# --------------------------------------------------------------------------- files


def _check_fields(obj: Any, where: str) -> EvalQuestion:
    if not isinstance(obj, dict):
        raise QuestionFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    known = {"qid", "question", "uid", "title", "kind", "must_contain", "line", "note", "split", "language"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise QuestionFileError(
            f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}"
        )
    for name in ("qid", "question"):
        if not isinstance(obj.get(name), str) or not obj[name].strip():
            raise QuestionFileError(f"{where}: field {name!r} is required and must be a non-empty string")
    for name in ("uid", "title", "kind", "split", "language"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise QuestionFileError(
                f"{where}: field {name!r} must be a string, got {type(obj[name]).__name__}"
            )
    if obj.get("kind") == ABSENT_KIND:
        if obj.get("uid") or obj.get("title"):
            raise QuestionFileError(
                f"{where}: a question of kind {ABSENT_KIND!r} names no product: drop 'uid' and 'title'"
            )
    elif not obj.get("uid") and not obj.get("title"):
        raise QuestionFileError(
            f"{where}: give the expected product as 'uid' or 'title' (or both), "
            f"or set kind {ABSENT_KIND!r} for a product the catalog does not hold"
        )
    must = obj.get("must_contain", [])
    if not isinstance(must, list) or not all(isinstance(m, str) for m in must):
        raise QuestionFileError(f"{where}: 'must_contain' must be a list of strings")
    line = obj.get("line")
    if line is not None and (isinstance(line, bool) or not isinstance(line, int) or line < 1):
        raise QuestionFileError(f"{where}: 'line' must be a positive integer")
    question = EvalQuestion(
        qid=obj["qid"],
        question=obj["question"],
        uid=obj.get("uid") or None,
        title=obj.get("title") or None,
        kind=obj.get("kind") or "unknown",
        must_contain=list(must),
        line=line,
        split=obj.get("split") or None,
        language=obj.get("language") or None,
        where=where,
    )
    if question.has_placeholder and not question.uid:
        raise QuestionFileError(
            f"{where}: a question with a {{title}} placeholder needs a 'uid' to fill it from"
        )
    return question


def load_questions(path: str | Path) -> list[EvalQuestion]:
    """Read and validate a question file; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: question file not found (make one with `rag eval questions --data CATALOG --out {path}`)"
        )
    questions: list[EvalQuestion] = []
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuestionFileError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            question = _check_fields(obj, where)
            if question.qid in seen:
                raise QuestionFileError(
                    f"{where}: qid {question.qid!r} repeats the one at {seen[question.qid]}"
                )
            seen[question.qid] = where
            questions.append(question)
    if not questions:
        raise QuestionFileError(f"{path}: no questions in the file")
    return questions


def write_questions(path: str | Path, questions: Iterable[EvalQuestion]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(question.to_dict(), ensure_ascii=False) + "\n" for question in questions)
    return path
