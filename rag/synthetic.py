"""A deterministic synthetic catalog shaped like AmazonTitles-1.3MM `trn.json` (no real data inside).

    rag synth --rows 1300000 --out data/synthetic_1.3M.jsonl.gz
    python -c "from rag.synthetic import write_synthetic_catalog; write_synthetic_catalog('data/synthetic_catalog.jsonl')"

Every row is `{"uid", "title", "content", "target_ind", "target_rel"}` like the real file. Text comes
from the small word lists below; lengths follow the real distribution (in characters, measured on the
1.36M non-empty rows of trn.json, see docs/catalog.md): titles median 54 (p25 37, p75 75, central 90%
17-125); non-empty content median 398 (p25 194, p75 805, central 90% 47-1,728, long tail); about 40%
of the rows have empty content. Lengths are drawn from a piecewise log-linear inverse CDF through
those quantiles, so they match them by construction.

The raw text carries what the cleaner must handle: HTML entities (named, decimal, hex, double-encoded)
in contents and some titles, every boilerplate family of the real data (including the lost-space
"--This text refers to thePaperbackedition." variants), near-duplicate titles (series volumes
"..., Vol. 2"; colour/size variants "(Blue, Large)"), and a mix of books (authors named as "by <Name>"
or "<Name> is the author of ..."), toys, music CDs, DVDs, kitchen items and clothing. Normal sentences
that mention "edition" or "copyright" are included too, so tests can check that cleaning keeps them.

The first rows are always `ANCHOR_PRODUCTS`: hand-written products with distinctive facts that tests
and demos ask about ("What is The Lighthouse Keeper's Daughter about?"). `ANCHOR_QUESTIONS` lists the
questions with the uid and a phrase the answer should contain.

Same seed, same rows -> same bytes (gzip output has a zero timestamp and no file name).
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
import os
import random
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ANCHOR_PRODUCTS", "ANCHOR_QUESTIONS", "generate_records", "write_synthetic_catalog"]

# --------------------------------------------------------------------------- anchors

ANCHOR_PRODUCTS: list[dict[str, Any]] = [
    {
        "uid": "1000000017",
        "title": "The Lighthouse Keeper's Daughter",
        "content": (
            "The Lighthouse Keeper&#8217;s Daughter is a novel by Eleanor Whitcombe. It tells the story of "
            "Maren Holt, who grows up on Gannet Rock, a storm-bound island off the coast of Maine, and keeps "
            "the lamp burning alone through the winter of 1898 after her father disappears in a gale. "
            "When a wrecked schooner brings a stranger ashore, Maren must decide whom she can trust. "
            "A story about courage, grief and the sea, told over one long winter."
        ),
        "target_ind": [],
        "target_rel": [],
    },
    {
        "uid": "1000000025",
        "title": "Seven Sleepy Kittens",
        "content": (
            "Seven Sleepy Kittens is a children's picture book written by Rosalind Pepper and illustrated by "
            "Tomasz Wren. Seven kittens on Hollyhock Farm cannot fall asleep, so each one counts something "
            "different &mdash; stars, sheep, raindrops, buttons &mdash; until the smallest kitten, Pip, counts "
            "her brothers and sisters and they all drift off. For ages 2 to 5; 32 pages."
        ),
        "target_ind": [],
        "target_rel": [],
    },
    {
        "uid": "1000000033",
        "title": "City of Djinns: A Year in Delhi",
        "content": (
            "City of Djinns is a travel memoir by William Dalrymple about the year he spent living in Delhi. "
            "He rents rooms from a Sikh landlady, wanders the old city, and digs through the layers of the "
            "city&#x2019;s past, from the Mughal emperors to Partition, meeting the people who still live among "
            "its ruins."
        ),
        "target_ind": [],
        "target_rel": [],
    },
    {
        "uid": "1000000041",
        "title": "The Copper Pot Kitchen: 120 Recipes from a Cornish Farmhouse",
        "content": (
            "The Copper Pot Kitchen is a cookbook by Agnes Trevelyan, who has cooked at Polwenna Farm in "
            "Cornwall for forty years. Its 120 recipes are grouped by season: saffron buns and stargazy pie, "
            "crab soup, and a blackberry &amp; apple crumble she calls her grandmother&#39;s. "
            "Every recipe gives weights in grams and cups."
        ),
        "target_ind": [],
        "target_rel": [],
    },
    {
        "uid": "B100000058",
        "title": "Tumbletree Wooden Rainbow Stacking Tower (12 Pieces)",
        "content": (
            "The Tumbletree Wooden Rainbow Stacking Tower has twelve rings of solid beech, each painted with "
            "water-based colours, that stack on a rocking base. Made in Slovenia by Tumbletree Toys. "
            "Suitable for ages 18 months and up; the tower stands 28 cm tall."
        ),
        "target_ind": [],
        "target_rel": [],
    },
    {
        "uid": "B100000066",
        "title": "Harbour Lights [Audio CD]",
        "content": (
            "Harbour Lights is the third album by the folk trio The Gannet Sisters. Its eleven songs were "
            "recorded live in St. Nicholas&#8217; Church in Galway over two nights in March, with fiddle, "
            "concertina and three-part harmony. The closing track, &quot;Lanterns on the Quay&quot;, was "
            "written for their grandfather, a harbour pilot."
        ),
        "target_ind": [],
        "target_rel": [],
    },
    {
        "uid": "B100000074",
        "title": "Midnight at the Observatory (DVD)",
        "content": (
            "Midnight at the Observatory is a documentary directed by Hana Kobayashi and narrated by "
            "Samuel Okafor. It follows the astronomers of a mountain observatory in the Atacama Desert "
            "through one winter as they search for a comet first seen in 1861. Running time 94 minutes; "
            "English subtitles."
        ),
        "target_ind": [],
        "target_rel": [],
    },
]

# (question, uid of the row that answers it, phrase the answer should contain)
ANCHOR_QUESTIONS: list[tuple[str, str, str]] = [
    ("What is The Lighthouse Keeper's Daughter about?", "1000000017", "Maren Holt"),
    ("Who wrote The Lighthouse Keeper's Daughter?", "1000000017", "Eleanor Whitcombe"),
    ("Who wrote Seven Sleepy Kittens?", "1000000025", "Rosalind Pepper"),
    ("What is Seven Sleepy Kittens about?", "1000000025", "kittens"),
    ("Who wrote City of Djinns?", "1000000033", "William Dalrymple"),
    ("Who wrote The Copper Pot Kitchen?", "1000000041", "Agnes Trevelyan"),
    ("What is the Tumbletree Wooden Rainbow Stacking Tower made of?", "B100000058", "beech"),
    ("Where was Harbour Lights recorded?", "B100000066", "Galway"),
    ("Who narrated Midnight at the Observatory?", "B100000074", "Samuel Okafor"),
]

# --------------------------------------------------------------------------- length distributions

# (cumulative probability, characters): real quantiles, plus a tail we chose (the real maxima are
# 1,999 and 197,622 characters; we stop at 600 and 40,000 to keep files small).
_TITLE_QUANTILES = [
    (0.0, 4),
    (0.05, 17),
    (0.25, 37),
    (0.5, 54),
    (0.75, 75),
    (0.95, 125),
    (0.99, 190),
    (0.999, 320),
    (1.0, 600),
]
_CONTENT_QUANTILES = [
    (0.0, 8),
    (0.05, 47),
    (0.25, 194),
    (0.5, 398),
    (0.75, 805),
    (0.95, 1728),
    (0.99, 4200),
    (0.999, 12000),
    (1.0, 40000),
]
EMPTY_CONTENT_SHARE = 0.40


class _LengthSampler:
    """Inverse CDF, linear in log(length) between the quantile knots."""

    def __init__(self, knots: list[tuple[float, int]]):
        self.ps = [p for p, _ in knots]
        self.logs = [math.log(v) for _, v in knots]

    def __call__(self, u: float) -> int:
        i = min(max(bisect.bisect_right(self.ps, u), 1), len(self.ps) - 1)
        p0, p1 = self.ps[i - 1], self.ps[i]
        frac = (u - p0) / (p1 - p0)
        return max(1, round(math.exp(self.logs[i - 1] + frac * (self.logs[i] - self.logs[i - 1]))))


# --------------------------------------------------------------------------- word lists

_FIRST = [
    "Anna",
    "Ben",
    "Clara",
    "Daniel",
    "Edith",
    "Felix",
    "Grace",
    "Henry",
    "Iris",
    "James",
    "Karen",
    "Leo",
    "Mara",
    "Nathan",
    "Olive",
    "Peter",
    "Quinn",
    "Rosa",
    "Simon",
    "Tessa",
    "Victor",
    "Wendy",
    "Alan",
    "Beatrice",
    "Colin",
    "Delia",
    "Ethan",
    "Fiona",
    "George",
    "Hazel",
    "Ivan",
    "Julia",
    "Kenneth",
    "Laura",
    "Martin",
    "Nora",
    "Oscar",
    "Paula",
    "Rupert",
    "Sylvia",
    "Thomas",
    "Ursula",
    "Walter",
    "Yvonne",
]
_LAST = [
    "Abbott",
    "Barlow",
    "Carver",
    "Dunmore",
    "Ellery",
    "Fenwick",
    "Garland",
    "Holloway",
    "Ingram",
    "Jessop",
    "Kendrick",
    "Lowell",
    "Merriman",
    "Norcross",
    "Oakley",
    "Pemberton",
    "Quill",
    "Radcliffe",
    "Sutton",
    "Thorne",
    "Underwood",
    "Vance",
    "Whitaker",
    "Yardley",
    "Ashdown",
    "Brennan",
    "Calloway",
    "Darrow",
    "Everly",
    "Fairfax",
    "Greaves",
    "Hartley",
    "Iveson",
    "Jarvis",
    "Kingsley",
    "Lockwood",
    "Mayhew",
    "Northam",
    "Orwin",
    "Prescott",
    "Rowntree",
    "Selby",
    "Tolliver",
    "Upton",
    "Winslow",
]
_ADJ = [
    "Silent",
    "Hidden",
    "Golden",
    "Broken",
    "Distant",
    "Quiet",
    "Forgotten",
    "Secret",
    "Wild",
    "Bright",
    "Last",
    "Lost",
    "Winter",
    "Summer",
    "Crimson",
    "Little",
    "Gentle",
    "Hollow",
    "Burning",
    "Endless",
    "Northern",
    "Painted",
    "Midnight",
    "Restless",
    "Silver",
    "Stolen",
    "Wandering",
    "Ancient",
    "Bitter",
    "Careful",
    "Curious",
    "Final",
    "Hungry",
    "Lonely",
    "Patient",
    "Simple",
    "Sudden",
    "Tender",
]
_NOUN = [
    "River",
    "Garden",
    "House",
    "Island",
    "Letter",
    "Journey",
    "Promise",
    "Shadow",
    "Harbour",
    "Kingdom",
    "Mountain",
    "Orchard",
    "Mirror",
    "Bridge",
    "Lantern",
    "Forest",
    "Voyage",
    "Season",
    "Daughter",
    "Stranger",
    "Winter",
    "Valley",
    "Tower",
    "Road",
    "Map",
    "Clock",
    "Window",
    "Compass",
    "Station",
    "Meadow",
    "Storm",
    "Field",
    "Castle",
    "Market",
    "Library",
    "Circle",
    "Song",
    "Thread",
    "Door",
]
_PLACE = [
    "Avalon",
    "Brightwater",
    "Carrick",
    "Dunmore",
    "Eastwick",
    "Fernhill",
    "Glenrowan",
    "Harrowgate",
    "Ivybridge",
    "Kestrel",
    "Bay",
    "Larkspur",
    "Millbrook",
    "Northwood",
    "Oakhaven",
    "Pinecrest",
    "Queensferry",
    "Ravenscar",
    "Stonehaven",
    "Thornbury",
    "Westmarch",
]
_TOPIC = [
    "gardening",
    "sailing",
    "birdwatching",
    "the French Revolution",
    "medieval castles",
    "watercolour painting",
    "bread baking",
    "mountain walking",
    "early jazz",
    "the history of maps",
    "family life in wartime",
    "beekeeping",
    "chess openings",
    "astronomy for beginners",
    "the Roman army",
    "woodworking",
]
_COLOUR = [
    "Blue",
    "Red",
    "Green",
    "Black",
    "White",
    "Navy",
    "Grey",
    "Pink",
    "Yellow",
    "Purple",
    "Orange",
    "Teal",
]
_SIZE = ["Small", "Medium", "Large", "X-Large", "XX-Large"]
_BRAND = [
    "Tumblewood",
    "Brightway",
    "Kitchenly",
    "Homestead",
    "Northstar",
    "Oakridge",
    "Pepperell",
    "Sunfield",
    "Trueform",
    "Zephyr",
]
_TOY = [
    "Building Blocks Set",
    "Plush Bear",
    "Wooden Train Set",
    "Puzzle Cube",
    "Jigsaw Puzzle, 500 Pieces",
    "Stacking Rings",
    "Marble Run",
    "Dolls House",
    "Remote Control Car",
    "Kite",
    "Spinning Top",
    "Board Game",
]
_KITCHEN = [
    "Cast Iron Skillet",
    "Chef's Knife",
    "Mixing Bowl Set",
    "Salt & Pepper Grinder Set",
    "Stainless Steel Saucepan",
    "Bamboo Cutting Board",
    "Silicone Spatula",
    "Cookie Cutters",
    "Teapot",
    "French Press",
]
_CLOTHING = ["Cotton T-Shirt", "Wool Scarf", "Rain Jacket", "Running Socks", "Fleece Hoodie", "Denim Shorts"]
_GENRE = ["folk", "jazz", "blues", "country", "classical", "rock", "soul", "bluegrass", "choral", "piano"]
_FORMAT = ("Paperback", "Hardcover", "Mass Market Paperback", "Audio CD", "Audio Cassette", "Library Binding")

# Filler sentences: templates filled from the lists. Some mention "edition" and "copyright" in a normal
# way, so tests can check that cleaning keeps ordinary sentences.
_BOOK_SENTENCES = [
    "This {adj} novel follows {first} {last} from {place} to the edge of the world.",
    "{first} has always believed that the {noun} holds the answer, and she's not the only one.",
    "Set in {place} in the years after the war, it is a story of loss, love and the {adj_l} {noun_l}.",
    "Readers who enjoyed the first book will find the same warmth here - and a few surprises.",
    "This revised edition adds two new chapters and an afterword by the author.",
    "The author holds the copyright to the photographs, which appear here for the first time.",
    "With maps, notes and a guide for reading groups.",
    "A practical introduction to {topic}, written for readers who have never tried it.",
    "It's a book about {topic} & the people who love it.",
    "Chapters cover the basics, common mistakes, and what to do when things go wrong.",
    "{first} {last}'s prose is clear and unhurried, and the ending stays with you.",
    "Part mystery, part family saga, it moves between {place} and {place2} over forty years.",
    "Each chapter ends with questions for discussion.",
    "First published in {year}, it has never been out of print.",
]
_PRODUCT_SENTENCES = [
    "Made from durable materials and built to last for years of everyday use.",
    "Easy to clean: wipe with a damp cloth or wash by hand in warm, soapy water.",
    "Available in {colour} and {colour2}; sizes from {size} to {size2}.",
    "It's a thoughtful gift for birthdays & holidays.",
    "Dimensions: {n} x {n2} x {n3} cm; weight {n4}00 g.",
    "Designed in {place} by the {brand} team.",
    "Not suitable for children under 3 years - contains small parts.",
    "The {adj_l} finish resists scratches and fading.",
    "Comes with a one-year warranty and a printed instruction booklet.",
    "Customers say it's the best {noun_l} they've owned.",
]
_MEDIA_SENTENCES = [
    "Recorded in {place} in {year}, with a {adj_l} sound that suits the songs.",
    'Includes the single "{adj} {noun}" and {n} previously unreleased tracks.',
    "A {genre} record that rewards repeated listening.",
    "This special edition includes a booklet of photographs and liner notes.",
    "Directed by {first} {last}, the film was shot on location in {place}.",
    "Bonus features: director's commentary, deleted scenes & a making-of documentary.",
    "{first} {last} gives the performance of a career as a {adj_l} stranger in {place}.",
    "Running time {n}0 minutes; subtitles in English and French.",
]


def _fill(template: str, rng: random.Random) -> str:
    ch = rng.choice
    return template.format(
        adj=ch(_ADJ),
        adj_l=ch(_ADJ).lower(),
        noun=ch(_NOUN),
        noun_l=ch(_NOUN).lower(),
        first=ch(_FIRST),
        last=ch(_LAST),
        place=ch(_PLACE),
        place2=ch(_PLACE),
        topic=ch(_TOPIC),
        year=rng.randint(1950, 2012),
        colour=ch(_COLOUR),
        colour2=ch(_COLOUR),
        size=_SIZE[0],
        size2=_SIZE[-1],
        n=rng.randint(2, 9),
        n2=rng.randint(2, 9),
        n3=rng.randint(2, 9),
        n4=rng.randint(1, 9),
        brand=ch(_BRAND),
        genre=ch(_GENRE),
    )


# --------------------------------------------------------------------------- boilerplate and entities


def _boilerplate(rng: random.Random) -> tuple[str, str]:
    """(prefix, suffix) publisher notices, one family per call, as the raw data writes them."""
    year = rng.randint(1987, 2006)
    fmt = rng.choice(_FORMAT)
    edition = rng.choice(
        [
            "--This text refers to an out of print or unavailable edition of this title.",
            f"--This text refers to the{fmt}edition.",
            f"--This text refers to an alternate{fmt}edition.",
            "--This text refers to an alternatekindle_editionedition.",
            "",
        ]
    )
    family = rng.randrange(8)
    if family == 0:
        return "", f"Copyright {year} Reed Business Information, Inc.{edition}"
    if family == 1:
        return "", f"Copyright {year} Cahners Business Information, Inc.{edition}"
    if family == 2:
        return (
            "",
            f"(c)Copyright &copy; Reed Business Information, a division of Reed Elsevier Inc. All rights reserved.{edition}",
        )
    if family == 3:
        return (
            "",
            f"{rng.choice(_FIRST)} {rng.choice(_LAST)}Copyright &#169; American Library Association. All rights reserved{edition}",
        )
    if family == 4:
        return "", f"(c)AudioFile {year}, Portland, Maine{edition}"
    if family == 5:
        return "Starred Review. ", f"Copyright {year} Reed Business Information, Inc."
    if family == 6:
        return f"[Signature]Reviewed by{rng.choice(_FIRST)} {rng.choice(_LAST)}", ""
    return "", edition or "--This text refers to the Paperback edition."


_ENTITY_STYLES = [
    # (apostrophe, dash, ampersand, quote)
    ("&#8217;", "&#8212;", "&amp;", "&#8220;"),  # decimal
    ("&#x2019;", "&#x2014;", "&amp;", "&#x201C;"),  # hex
    ("&rsquo;", "&mdash;", "&amp;", "&quot;"),  # named
    ("&amp;#8217;", "&amp;mdash;", "&amp;amp;", "&amp;quot;"),  # double-encoded
]


def _encode_entities(text: str, style: tuple[str, str, str, str]) -> str:
    apostrophe, dash, amp, quote = style
    # "&" first, or the entities written below would be encoded again
    return text.replace("&", amp).replace("'", apostrophe).replace(" - ", f" {dash} ").replace('"', quote)


# --------------------------------------------------------------------------- rows


_DANGLING = frozenset(
    ["a", "an", "and", "by", "for", "from", "in", "of", "on", "the", "to", "with", "A", "An", "The"]
)


def _trim(text: str, target: int) -> str:
    """Cut at the last space at or before `target` characters (never shorter than half of it),
    dropping a dangling small word ("... Book 3 of") or separator so the cut reads naturally."""
    if len(text) <= target:
        return text
    cut = text.rfind(" ", target // 2, target + 1)
    if cut <= 0:  # no space near the target: keep the first word whole rather than cut it
        cut = text.find(" ")
        if cut <= 0:
            return text
    text = text[:cut].rstrip(" ,;:-&")
    for opening, closing in ("()", "[]"):  # never leave "(Widescreen" open
        if text.count(opening) > text.count(closing):
            text = text[: text.rindex(opening)].rstrip(" ,;:-&")
    head, _, last = text.rpartition(" ")
    if head and (last in _DANGLING or last.isdigit()):
        text = head.rstrip(" ,;:-&")
    return text


_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BASE36_PAIRS = [a + b for a in _BASE36 for b in _BASE36]  # 1296 two-character digits


def _uid(kind: str, index: int) -> str:
    # Bijective maps from the row index to 10-character ASIN-like ids, so uids never repeat:
    # books "0" + 9 digits (ISBN-10-like), other products "B0" + 8 base-36 characters.
    # (Anchors use "1..." and "B1...", so they never collide with generated rows.)
    if kind == "book":
        return "0" + str((index * 7_919_393 + 104_729) % 1_000_000_000).zfill(9)
    value = (index * 1_000_003 + 7_777_777) % 36**8
    pairs = _BASE36_PAIRS
    return (
        "B0"
        + pairs[value // 1296**3]
        + pairs[value // 1296**2 % 1296]
        + pairs[value // 1296 % 1296]
        + pairs[value % 1296]
    )


_KINDS = ["book", "toy", "music", "dvd", "kitchen", "clothing"]
_KIND_WEIGHTS = [0.58, 0.08, 0.1, 0.1, 0.08, 0.06]

# Title extras per kind, filled only when used. Placeholders as in `_fill` plus {person}/{brand}.
_TITLE_BASES = {
    "book": ["The {adj} {noun}", "{noun} of {place}", "A {noun} for {first}", "{first}'s {noun}"],
    "toy": ["{brand} {adj} {toy}"],
    "kitchen": ["{brand} {kitchen}"],
    "clothing": ["{brand} Men's {clothing}", "{brand} Women's {clothing}"],
    "music": ["{adj} {noun}", "Songs from the {adj} {noun}"],
    "dvd": ["The {adj} {noun}", "{noun} of {place}"],
}
_TITLE_EXTRAS = {
    "book": [
        ": A Novel",
        ": {adj} {noun}s and Other Stories",
        " ({format})",
        ": A Guide to {topic_t}",
        ": Book {n} of the {place} Series",
        " by {person}",
        ": A Memoir",
        " (Classics Library)",
    ],
    "toy": [" ({colour})", ", Ages {n}+", " - Educational Toy for Boys & Girls", " with {n}{n2} Pieces"],
    "kitchen": [", {n}-Inch", " ({colour})", ", Dishwasher Safe", " - Oven Safe to 260 C", ", Set of {n}"],
    "clothing": [" ({colour}, {size})", " - Machine Washable", ", Organic Cotton"],
    "music": [" [Audio CD]", " (Live at {place})", " (Remastered)", ": Songs of {place}"],
    "dvd": [" (DVD)", " (Widescreen Edition)", " [Blu-ray]", " - Season {n}", " (Special Edition)"],
}


_WORDS: dict[str, Sequence[str]] = {
    "adj": _ADJ,
    "noun": _NOUN,
    "place": _PLACE,
    "first": _FIRST,
    "format": _FORMAT,
    "colour": _COLOUR,
    "size": _SIZE,
    "toy": _TOY,
    "kitchen": _KITCHEN,
    "clothing": _CLOTHING,
}
_FIELDS: dict[str, list[str]] = {}  # template -> the field names it uses (parsed once)


class _Generator:
    """Builds pools of title parts and paragraphs once, then assembles each row from a few picks.

    Per row: a title prefix plus a suffix chosen by length (so titles follow the length
    distribution and repeat rarely: 1,000 x 1,500 combinations per kind), an opening sentence naming
    the author/brand, and a pre-built paragraph trimmed to the sampled length. Random indices come
    from `random()` rather than `rng.choice`, which is five times slower and just as deterministic.
    """

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        rng = self.rng
        self.rnd = rng.random
        self.title_len = _LengthSampler(_TITLE_QUANTILES)
        self.content_len = _LengthSampler(_CONTENT_QUANTILES)
        self.prefixes = {
            kind: [self._format(self.pick(_TITLE_BASES[kind])) for _ in range(1000)] for kind in _KINDS
        }
        self.suffixes: dict[str, tuple[list[int], list[str]]] = {}
        for kind in _KINDS:
            pool = sorted({self._suffix(kind) for _ in range(1500)} | {""}, key=lambda t: (len(t), t))
            self.suffixes[kind] = ([len(t) for t in pool], pool)
        sentences = {
            "book": [_fill(t, rng) for t in _BOOK_SENTENCES for _ in range(40)],
            "product": [_fill(t, rng) for t in _PRODUCT_SENTENCES for _ in range(40)],
            "media": [_fill(t, rng) for t in _MEDIA_SENTENCES for _ in range(40)],
        }
        # Paragraphs of 2-40 sentences (about 150-3,000 characters); long contents join several.
        self.paragraphs = {
            group: [
                " ".join(pool[int(self.rnd() * len(pool))] for _ in range(2 + int(self.rnd() ** 2 * 39)))
                for _ in range(1500)
            ]
            for group, pool in sentences.items()
        }
        self.recent: dict[str, list[str]] = {kind: [] for kind in _KINDS}
        self.kinds = rng.choices(_KINDS, _KIND_WEIGHTS, k=4096)

    def pick(self, seq: Sequence[str]) -> str:
        return seq[int(self.rnd() * len(seq))]

    def _format(self, template: str, person: str = "", brand: str = "") -> str:
        fields = _FIELDS.get(template)
        if fields is None:
            fields = _FIELDS[template] = [
                name for _, name, _, _ in string.Formatter().parse(template) if name
            ]
        if not fields:
            return template
        pick, rnd = self.pick, self.rnd
        values: dict[str, Any] = {}
        for name in fields:
            if name == "person":
                values[name] = person or f"{pick(_FIRST)} {pick(_LAST)}"
            elif name == "brand":
                values[name] = brand or pick(_BRAND)
            elif name in ("n", "n2"):
                values[name] = 2 + int(rnd() * 8) if name == "n" else int(rnd() * 10)
            elif name == "topic_t":
                values[name] = pick(_TOPIC).title()
            else:
                values[name] = pick(_WORDS[name])
        return template.format(**values)

    def _suffix(self, kind: str) -> str:
        """0-4 extras, sometimes followed by subtitles: lengths from 0 to about 500 characters."""
        extras = _TITLE_EXTRAS[kind]
        count = int(self.rnd() * 5)
        start = int(self.rnd() * len(extras))
        suffix = "".join(
            self._format(extras[(start + i) % len(extras)]) for i in range(min(count, len(extras)))
        )
        for _ in range(int(self.rnd() ** 3 * 10)):
            suffix += self._format(": The {adj} {noun} of {place}")
        return suffix

    def title(self, kind: str, target: int) -> str:
        rnd = self.rnd
        recent = self.recent[kind]
        if recent and rnd() < 0.1:  # near-duplicate of a recent product
            base = recent[int(rnd() * len(recent))]
            if kind in ("book", "music", "dvd"):
                return f"{base}, Vol. {2 + int(rnd() * 11)}"
            return f"{base} ({_COLOUR[int(rnd() * len(_COLOUR))]}, {_SIZE[int(rnd() * len(_SIZE))]})"
        prefixes = self.prefixes[kind]
        title = prefixes[int(rnd() * len(prefixes))]
        need = target - len(title)
        if need > 0:
            lengths, pool = self.suffixes[kind]
            at = bisect.bisect_left(lengths, need)
            at = min(max(at - int(rnd() * 6), 0), len(pool) - 1)  # one of the suffixes just shorter or equal
            title += pool[at]
        if len(title) > target + 8:
            title = _trim(title, target)
        if len(recent) < 64:
            recent.append(title)
        else:
            recent[int(rnd() * 64)] = title
        return title

    def content(self, kind: str, title: str, target: int) -> str:
        rnd = self.rnd
        person = f"{_FIRST[int(rnd() * len(_FIRST))]} {_LAST[int(rnd() * len(_LAST))]}"
        prefix = suffix = ""
        if kind == "book":
            group = "book"
            opening = (
                f"{title} by {person}."
                if rnd() < 0.5
                else f"{person} is the author of {title} and {2 + int(rnd() * 8)} other books."
            )
            if rnd() < 0.3:
                prefix, suffix = _boilerplate(self.rng)
        elif kind in ("music", "dvd"):
            group = "media"
            opening = f"{title}, by {person}." if kind == "music" else f"{title}, starring {person}."
            if rnd() < 0.08:
                prefix, suffix = _boilerplate(self.rng)
        else:
            group = "product"
            opening = f"The {title} from {_BRAND[int(rnd() * len(_BRAND))]}."
        body_target = max(8, target - len(prefix) - len(suffix))
        body = opening
        paragraphs = self.paragraphs[group]
        while len(body) < body_target:
            body += " " + paragraphs[int(rnd() * len(paragraphs))]
        if len(body) > body_target:
            # end at the sentence end nearest the target (before or after: unbiased), else at a word
            before = body.rfind(". ", body_target * 2 // 3, body_target + 1)
            after = body.find(". ", body_target, body_target * 4 // 3)
            if after > 0 and (before < 0 or after - body_target < body_target - before):
                before = after
            body = body[: before + 1] if before > 0 else _trim(body, body_target).rstrip(".") + "."
        text = f"{prefix}{body}{suffix}"
        if rnd() < 0.5:
            text = _encode_entities(text, _ENTITY_STYLES[int(rnd() * len(_ENTITY_STYLES))])
        return text

    def record(self, index: int) -> dict[str, Any]:
        rnd = self.rnd
        kind = self.kinds[(index * 7 + int(rnd() * 4096)) % 4096]
        title = self.title(kind, self.title_len(rnd()))
        raw_title = title
        if "&" in title or "'" in title:
            r = rnd()
            if r < 0.5:
                raw_title = title.replace("&", "&amp;").replace("'", "&#39;")
            elif r < 0.6:
                raw_title = title.replace("&", "&amp;amp;")
        content = ""
        if rnd() >= EMPTY_CONTENT_SHARE:
            content = self.content(kind, title, self.content_len(rnd()))
        related = [int(rnd() * 1_000_000) for _ in range(int(rnd() * 5))]
        return {
            "uid": _uid(kind, index),
            "title": raw_title,
            "content": content,
            "target_ind": related,
            "target_rel": [1.0] * len(related),
        }


def generate_records(rows: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield `rows` raw trn.json-shaped dicts: `ANCHOR_PRODUCTS` first, then generated rows.

    Deterministic: the same (rows, seed) always yields the same records, and the first n records of
    a longer run equal those of a run with rows=n.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    for anchor in ANCHOR_PRODUCTS[:rows]:
        yield dict(anchor, target_ind=list(anchor["target_ind"]), target_rel=list(anchor["target_rel"]))
    if rows <= len(ANCHOR_PRODUCTS):
        return
    generator = _Generator(seed)  # builds its pools once (about 0.2 s)
    for index in range(rows - len(ANCHOR_PRODUCTS)):
        yield generator.record(index)


def write_synthetic_catalog(path: str | Path, rows: int = 5000, seed: int = 0) -> Path:
    """Write `rows` synthetic records as JSON lines to `path` (gzip when it ends in .gz); return the path.

    Creates parent directories; writes to a temporary file and renames it, so a reader never sees
    half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write(tmp, path.name.endswith(".gz"), rows, seed)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        raise
    os.replace(tmp, path)
    return path


def _write(tmp: Path, compress: bool, rows: int, seed: int) -> None:
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    with open(tmp, "wb") as raw:
        # mtime=0 and an empty name: the same rows give the same .gz bytes on every run and path;
        # level 1: gzip at level 6 took 40% of the generation time, for a file only ~25% smaller
        out = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) if compress else raw
        )
        try:
            batch: list[str] = []
            for record in generate_records(rows, seed):
                batch.append(dumps(record))
                if len(batch) >= 2048:
                    out.write(("\n".join(batch) + "\n").encode("utf-8"))
                    batch.clear()
            if batch:
                out.write(("\n".join(batch) + "\n").encode("utf-8"))
        finally:
            if out is not raw:
                out.close()
