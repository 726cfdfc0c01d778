"""Text cleaning for catalog titles and descriptions: entities, boilerplate, Unicode, whitespace.

    python -c "from rag.cleaning import clean_text; print(clean_text('It&#8217;s here.--This text refers to thePaperbackedition.'))"

The raw AmazonTitles-1.3MM text carries HTML entities (named, decimal, hex and sometimes
double-encoded such as `&amp;#8217;`), stray Windows-1252 code points, and publisher boilerplate
("--This text refers to an out of print or unavailable edition of this title.", "Copyright 1999
Reed Business Information, Inc.", ...). `clean_text` turns one raw description into plain, single-spaced
text; `clean_title` does the same for titles but never removes boilerplate (a title is never a notice).

Order of the steps, and why:
1. decode HTML entities, up to three rounds, so double-encoded text is decoded too;
2. Unicode NFC, so "e" + combining accent and "é" compare equal (and the patterns see composed text);
3. map C1 code points (U+0080-U+009F, which are never meant in real text) to what Windows-1252 meant
   by them (U+0092 -> right single quote), drop the other control and invisible format characters
   (bidi overrides and isolates such as U+202E, which make text read differently than it is stored,
   and Unicode tag characters, which can carry text no reader sees) and lone surrogates (they cannot
   be written as UTF-8);
4. remove HTML markup (`strip_markup`): catalog text is plain text, and step 1 turns an escaped
   `&lt;script&gt;` into a live `<script>`, so tags are removed after decoding, `<script>` and
   `<style>` elements with their content;
5. remove boilerplate (each match becomes a space, so words on either side never fuse);
6. collapse every run of whitespace (newlines and tabs included) to one space and strip.
"""

from __future__ import annotations

import html
import re
import sys
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = [
    "clean_text",
    "clean_title",
    "compile_boilerplate",
    "default_boilerplate",
    "strip_invisible",
    "strip_markup",
]

# Invisible format characters that only get in the way of search or hide what a text says: zero-width
# space, word joiner, soft hyphen, BOM; the bidi marks, embeddings, overrides and isolates (U+200E,
# U+200F, U+061C, U+202A-U+202E, U+2066-U+2069: "Trojan Source" text reads differently than it is
# stored); invisible operators (U+2061-U+2064), deprecated format controls (U+206A-U+206F), Mongolian
# vowel separator, interlinear annotation marks; the Unicode tag characters (U+E0000-U+E007F) and
# supplementary variation selectors (U+E0100-U+E01EF), which can smuggle text no reader sees into a
# prompt. Dropped without a trace: joining the halves is what the writer meant. ZWJ U+200D and ZWNJ
# U+200C are kept (emoji sequences, Persian and Indic scripts), as are the emoji variation selectors.
_INVISIBLE = (
    "\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef"
)
_INVISIBLE_CHARS = re.compile(f"[{_INVISIBLE}]")
# Control characters other than whitespace, C1 controls, lone surrogates and the invisible characters.
_UNWANTED = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1b\x7f-\x9f\ud800-\udfff{_INVISIBLE}]")

# HTML markup. Plain text never needs it, and a consumer that pastes a field into a page unescaped
# would run it. Removed: comments, CDATA, doctype/processing instructions, `<script>`/`<style>`/... elements
# with their content, tags of HTML elements (any attributes), and any other tag-shaped text with an
# attribute (`<x onclick=...>` is an element to a browser). Left alone: text that only looks like
# angle brackets ("I <3 NY", "a < b > c", "<Your Name Here> Notebook") and special-token look-alikes
# (`<|eot_id|>`, handled by rag.prompt and rag.safety).
_HTML_ELEMENTS = (
    "a|abbr|address|area|article|aside|audio|b|base|bdi|bdo|big|blink|blockquote|body|br|button|canvas|caption|"
    "center|cite|code|col|colgroup|data|datalist|dd|del|details|dfn|dialog|div|dl|dt|em|embed|fieldset|"
    "figcaption|figure|font|footer|form|frame|frameset|h[1-6]|head|header|hr|html|i|iframe|img|input|ins|kbd|"
    "label|legend|li|link|main|map|mark|marquee|math|menu|meta|meter|nav|noscript|object|ol|optgroup|option|"
    "output|p|param|picture|pre|progress|q|rp|rt|ruby|s|samp|script|section|select|small|source|span|strike|"
    "strong|style|sub|summary|sup|svg|table|tbody|td|template|textarea|tfoot|th|thead|time|title|tr|track|tt|"
    "u|ul|var|video|wbr|xmp|plaintext|xml|image|use|animate|set|foreignobject"
)
_MARKUP = re.compile(
    r"<!--.*?(?:-->|$)"  # comments (an unclosed one runs to the end)
    r"|<!\[CDATA\[.*?(?:\]\]>|$)"
    r"|<[!?][A-Za-z][^<>]*>"  # <!DOCTYPE ...>, <?xml ...?>
    r"|<(script|style|iframe|object|noscript|template|textarea|xmp|title)\b[^>]*>.*?(?:</\1\s*>|$)"
    rf"|</?(?:{_HTML_ELEMENTS})(?=[\s/>])[^<>]*>"
    r"|</?[A-Za-z][\w:-]*\s+[^<>]*=[^<>]*>",
    re.IGNORECASE | re.DOTALL,
)


def _c1_replacement(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    if 0x80 <= code <= 0x9F:
        try:
            # U+0092 as cp1252 byte 0x92 is a right single quote; the five undefined ones raise.
            return bytes([code]).decode("cp1252")
        except UnicodeDecodeError:
            return ""
    if _INVISIBLE_CHARS.match(char):
        return ""  # invisible: joining the halves is what the writer meant
    return " "  # other controls: a space, so the words on either side stay apart


def strip_invisible(text: str) -> str:
    """Remove the invisible format characters (bidi controls, tag characters, zero-width space, ...)."""
    return _INVISIBLE_CHARS.sub("", text) if _INVISIBLE_CHARS.search(text) else text


def strip_markup(text: str) -> str:
    """Remove HTML markup (see `_MARKUP`); each removed tag becomes a space so words stay apart.

    Repeated until nothing changes, so removing one tag cannot assemble another (`<scr<b>ipt>`)."""
    for _ in range(5):
        if "<" not in text:
            return text
        stripped = _MARKUP.sub(" ", text)
        if stripped == text:
            return text
        text = stripped
    return text.replace("<", "‹")  # still changing after five rounds: no tag can be left whole


def _required_literal(pattern: re.Pattern[str]) -> str | None:
    """The longest run of literal characters that every match of `pattern` must contain, or None.

    Boilerplate is rare, so `needle in text` (a C substring search) lets almost every text skip the
    regex; patterns whose first item is an optional group would otherwise be tried at every position
    (that made cleaning 5x slower). Only top-level literals and non-optional groups count, so the
    needle is really required. Case-insensitive patterns get no needle.
    """
    if pattern.flags & re.IGNORECASE:
        return None
    if sys.version_info >= (3, 11):
        from re import _parser as sre_parse
    else:  # pragma: no cover - Python 3.10
        import sre_parse
    try:
        tree = sre_parse.parse(pattern.pattern, pattern.flags)
    except (re.error, ValueError, TypeError, AttributeError):  # pragma: no cover - it compiled already
        return None
    runs: list[str] = []
    current: list[str] = []

    def walk(items: Any) -> None:  # sre_parse's SubPattern: (opcode, argument) pairs, iterated by index
        nonlocal current
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                current.append(chr(arg))
            elif name == "SUBPATTERN" and not arg[1] & re.IGNORECASE:  # (group, add, del flags, items)
                walk(arg[-1])
            elif name == "AT":
                continue  # anchors (^, \b) match no characters: the run goes on
            else:
                if current:
                    runs.append("".join(current))
                current = []

    walk(tree)
    if current:
        runs.append("".join(current))
    best = max(runs, key=len, default="")
    return best if len(best) >= 3 else None


_NEEDLES: dict[tuple[str, int], str | None] = {}


def compile_boilerplate(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Compile boilerplate regexes (as in `CatalogConfig.boilerplate_patterns`).

    Raises ValueError naming the index and text of the first pattern that does not compile.
    """
    compiled: list[re.Pattern[str]] = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(
                f"catalog.boilerplate_patterns[{i}] is not a valid regular expression ({exc}): {pattern!r}"
            ) from None
    return compiled


@lru_cache(maxsize=1)
def default_boilerplate() -> tuple[re.Pattern[str], ...]:
    """The compiled `rag.config.DEFAULT_BOILERPLATE` patterns (compiled once, then cached)."""
    from rag.config import DEFAULT_BOILERPLATE

    return tuple(compile_boilerplate(DEFAULT_BOILERPLATE))


def decode_entities(text: str) -> str:
    """Decode HTML entities (named, decimal, hex), also double-encoded ones like `&amp;#8217;`."""
    # Three rounds cover "&amp;amp;#8217;"; stop early once nothing changes.
    for _ in range(3):
        if "&" not in text:
            break
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    return text


def _normalise(text: str) -> str:
    text = decode_entities(text)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if _UNWANTED.search(text) is not None:
        text = _UNWANTED.sub(_c1_replacement, text)
    if "<" in text:
        text = strip_markup(text)
    return text


def clean_text(text: str, boilerplate: Sequence[re.Pattern[str]] | None = None) -> str:
    """Clean one description: entities, Unicode NFC, control characters, markup, boilerplate, whitespace.

    `boilerplate` defaults to the compiled `DEFAULT_BOILERPLATE`; pass `[]` to remove none.
    All whitespace (newlines included) becomes single spaces; the result is stripped.
    """
    if not text:
        return ""
    text = _normalise(text)
    patterns = default_boilerplate() if boilerplate is None else boilerplate
    for pattern in patterns:
        key = (pattern.pattern, pattern.flags)
        try:
            needle = _NEEDLES[key]
        except KeyError:
            needle = _NEEDLES[key] = _required_literal(pattern)
        if needle is None or needle in text:
            text = pattern.sub(" ", text)
    return " ".join(text.split())


def clean_title(text: str) -> str:
    """Clean one title: like `clean_text` but without boilerplate removal."""
    if not text:
        return ""
    return " ".join(_normalise(text).split())
