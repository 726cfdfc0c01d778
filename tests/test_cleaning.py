"""Cleaning of titles and descriptions (rag/cleaning.py) on hand-written, realistic strings.

.venv/bin/python -m pytest tests/test_cleaning.py -q
"""

from __future__ import annotations

import re
import unicodedata

import pytest

from rag.cleaning import clean_text, clean_title, compile_boilerplate
from rag.config import DEFAULT_BOILERPLATE, CatalogConfig


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Grandma&#8217;s Quilt", "Grandma\u2019s Quilt"),  # decimal
        ("Grandma&#x2019;s Quilt", "Grandma\u2019s Quilt"),  # hex, lower case x
        ("Grandma&#X2019;s Quilt", "Grandma\u2019s Quilt"),  # hex, upper case X
        ("Salt &amp; Pepper", "Salt & Pepper"),  # named
        ("Night &mdash; and Day", "Night \u2014 and Day"),
        ("&quot;Hello&quot; she said", '"Hello" she said'),
        ("Grandma&amp;#8217;s Quilt", "Grandma\u2019s Quilt"),  # double-encoded
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),  # double-encoded named
        ("Don&#x92;t stop", "Don\u2019t stop"),  # Windows-1252 code point as an entity
        ("AT&T phones", "AT&T phones"),  # a bare ampersand is not an entity
    ],
)
def test_entities_are_decoded(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected
    assert clean_title(raw) == expected


def test_nfc_control_characters_and_whitespace() -> None:
    decomposed = "Cafe\u0301 Society"
    assert not unicodedata.is_normalized("NFC", decomposed)
    assert clean_title(decomposed) == "Caf\u00e9 Society"
    assert clean_text("  A\tsong\n\nfor\r\n the\u00a0road\u2028now  ") == "A song for the road now"
    assert clean_text("Bell\x00\x07 ringer\x1b") == "Bell ringer"
    assert clean_text("zero\u200bwidth soft\u00adhyphen\ufeff") == "zerowidth softhyphen"
    assert clean_text("It\x92s here") == "It\u2019s here"  # a raw C1 control read as Windows-1252
    assert clean_text("lone \ud800 surrogate") == "lone surrogate"  # cannot be written as UTF-8
    assert clean_text("") == "" and clean_title("   ") == ""


# Every family found in the real sample, written here in our own words around the notice.
BOILERPLATE_CASES = [
    (
        "A fine debut novel.--This text refers to an out of print or unavailable edition of this title.",
        "A fine debut novel.",
    ),
    ("A fine debut novel.--This text refers to thePaperbackedition.", "A fine debut novel."),
    ("A fine debut novel.--This text refers to theHardcoveredition.", "A fine debut novel."),
    ("A fine debut novel.--This text refers to an alternatePaperbackedition.", "A fine debut novel."),
    (
        "A fine debut novel.--This text refers to thePrint on Demand (Paperback)edition.",
        "A fine debut novel.",
    ),
    ("A fine debut novel.--This text refers to an alternatekindle_editionedition.", "A fine debut novel."),
    ("A fine debut novel.--This text refers to the Audio CD edition.", "A fine debut novel."),
    ("Recommended. Copyright 1999 Reed Business Information, Inc.", "Recommended."),
    (
        "Recommended.Copyright 2001 Cahners Business Information, Inc.--This text refers to theHardcoveredition.",
        "Recommended.",
    ),
    (
        (
            "Lively and wise. (Jan.) (c)Copyright &copy; Reed Business Information, a division of Reed Elsevier Inc. "
            "All rights reserved.--This text refers to an out of print or unavailable edition of this title."
        ),
        "Lively and wise. (Jan.)",
    ),
    (
        (
            "Lively and wise.(Mar.)Copyright &copy; Reed Business Information, a division of Reed Elsevier Inc. "
            "All rights reserved."
        ),
        "Lively and wise.(Mar.)",
    ),
    (
        (
            "For all libraries.Jane DoeCopyright &#169; American Library Association. All rights reserved"
            "--This text refers to theHardcoveredition."
        ),
        "For all libraries.Jane Doe",
    ),
    (
        "Warm narration. J.K. (c)AudioFile, Portland, Maine--This text refers to theAudio Cassetteedition.",
        "Warm narration. J.K.",
    ),
    ("Warm narration. (c) AudioFile 2004, Portland, Maine", "Warm narration."),
    ("Starred Review. A tense, clever thriller.", "A tense, clever thriller."),
    ("Starred Review.A tense, clever thriller.", "A tense, clever thriller."),
    ("[Signature]Reviewed byAnna SmithThey came at dawn.", "They came at dawn."),
    ("Sharp and funny.Copyright 2004 Kirkus Reviews, LP. All rights reserved.", "Sharp and funny."),
]


@pytest.mark.parametrize("raw, expected", BOILERPLATE_CASES)
def test_boilerplate_families_are_removed(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


@pytest.mark.parametrize(
    "sentence",
    [
        "This revised edition adds two new chapters and a new afterword.",
        "The first edition of this title sold out in a week.",
        "The author retains the copyright to all photographs in this book.",
        "Copyright law is explained in plain English, with cases from 1999 onwards.",
        "This text refers to the 1850 edition of the poems, which the editor prefers.",
        "A starred review in the local paper called it charming.",
        "The Reed Business School of Information is in Leeds.",
        "Written by Anna Smith -- with love -- for her grandchildren.",
    ],
)
def test_ordinary_sentences_survive(sentence: str) -> None:
    text = f"Intro sentence. {sentence} Closing sentence."
    assert clean_text(text) == text


def test_titles_keep_boilerplate_like_words() -> None:
    # A title is never a notice, so clean_title does not remove anything.
    title = "Copyright 1999 Reed Business Information, Inc. (A History)"
    assert clean_title(title) == title


def test_custom_and_empty_pattern_lists() -> None:
    text = "Good book. SPAM SPAM. --This text refers to thePaperbackedition."
    assert (
        clean_text(text, compile_boilerplate([r"SPAM\s*"]))
        == "Good book. . --This text refers to thePaperbackedition."
    )
    assert clean_text(text, []) == text
    with pytest.raises(ValueError, match=r"boilerplate_patterns\[1\]"):
        compile_boilerplate(["ok", "(unclosed"])


def test_config_default_patterns_are_the_cleaner_defaults() -> None:
    assert CatalogConfig().boilerplate_patterns == DEFAULT_BOILERPLATE
    for pattern in compile_boilerplate(DEFAULT_BOILERPLATE):
        assert isinstance(pattern, re.Pattern)
        assert not pattern.match("")  # no pattern may match empty text (it would loop or eat spaces)


@pytest.mark.parametrize(
    "pattern, text, expected",
    [
        (r"(?:ab)?cdef", "xx abcdef cdef yy", "xx yy"),
        (r"(?i)spam\s*", "SPAM eggs Spam", "eggs"),  # no needle: case-insensitive
        (r"zz(?i:spam)", "zzSPAM eggs", "eggs"),  # case-insensitive group ends the needle
        (r"\bfoo\b-bar", "a foo-bar b", "a b"),
        (r"x(?:abc|abd)yz", "1 xabdyz 2", "1 2"),
        (r"a|bcdef", "a bcdef c", "c"),  # top-level alternation: no needle, regex always runs
    ],
)
def test_needle_prefilter_never_skips_a_match(pattern: str, text: str, expected: str) -> None:
    assert clean_text(text, compile_boilerplate([pattern])) == expected
