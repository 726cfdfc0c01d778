"""BM25 index over the cleaned descriptions (title + content), stored inside each index version.

    rag index build --data ../shared/data/amazontitles/trn_sample.jsonl   # builds it with the title index
    python -m benchmarks.bench_lexical --rows 100000                      # build time, size, RSS, latency

Users often remember what a product is about, not what it is called ("a book about a singing
cowboy and his horse Trigger"). The title index cannot find such rows; this module adds a second
retrieval path: Okapi BM25 over the title and the description of every row, written as plain numpy
arrays (never pickle) next to the FAISS file and listed in the version's manifest, so
`rag index verify` checks it like every other file. docs/descriptions.md explains the choice
(measured against SQLite FTS5 and dense description embeddings) and every figure.

Files of a version (flat names: the manifest lists files of the version directory):

    lexical.json                  format, BM25 parameters, segments, document counts
    lexical.<seg>.hashes.npy      int64, sorted: 64-bit hash of each term (lookup by binary search)
    lexical.<seg>.terms.json      the terms in the same order (for people and tools; not loaded to query)
    lexical.<seg>.indptr.npy      int64, len(terms) + 1: postings of term t are [indptr[t], indptr[t+1])
    lexical.<seg>.docs.npy        int32: document number of each posting, ascending within a term
    lexical.<seg>.impact.npy      float16: BM25 term-frequency part tf*(k1+1)/(tf + k1*(1-b+b*dl/avgdl))
    lexical.<seg>.ids.npy         int64: faiss_id of each document number
    lexical.<seg>.champ_*.npy     the same CSR layout, for terms in more than CHAMPIONS documents only:
                                  their CHAMPIONS highest-impact postings (doc-sorted)
    lexical.tombstones.npy        int64, sorted: faiss_ids whose base-segment entry is stale

Two segments, like a tiny LSM tree: `base` (built by `rag index build` or a compaction) and `delta`
(rows upserted since). `rag index update` hard-links the base files from the parent version
(zero copy; files of a committed version never change), rebuilds only the small delta from the
changed rows, and adds the changed and deleted faiss_ids to the tombstones that hide their stale
base entries. When the delta or the tombstones pass COMPACT_FRACTION of the base, the update
rebuilds the base instead. The query-time idf uses document frequencies of both segments.

Queries are analysed like documents (lower case, accents folded, English + Portuguese stop words,
a light English stemmer) after a small Portuguese -> English word map, because questions come in
Portuguese while the catalog is English. Scoring is exact for rare terms; a common term contributes
through its champion list, and the best candidates then get their exact BM25 (see `score`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 2  # 2: champion lists
META_NAME = "lexical.json"
TOMBSTONES_NAME = "lexical.tombstones.npy"
SEGMENT_FILES = (
    "hashes.npy",
    "terms.json",
    "indptr.npy",
    "docs.npy",
    "impact.npy",
    "ids.npy",
    "champ_indptr.npy",
    "champ_docs.npy",
    "champ_impact.npy",
)
K1 = 1.2
B = 0.75
TITLE_WEIGHT = (
    2  # title words count twice: a word of the title says more about the product than one of a long blurb
)
COMPACT_FRACTION = 0.10  # rebuild the base when delta rows or tombstones exceed this share of it
CHUNK_DOCS = 50_000  # documents tokenised per numpy counting pass during a build
CHAMPIONS = 20_000  # terms in more documents keep a "champion list" of their best-impact postings
DEFAULT_MAX_POSTINGS = 200_000  # postings accumulated per query before the rest only re-score candidates
DEFAULT_RESCORE = 2_000  # candidates whose exact BM25 is computed when scoring was not exhaustive
SNIPPET_CHARS = 320
SNIPPET_ROWS = 10  # results that get a snippet: ~0.25 ms each (row fetch + sentence matching); the rest ""

# --------------------------------------------------------------------------- text analysis

# English stop words (function words, plus question and request words that say nothing about a product).
STOPWORDS_EN = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "aren",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "cannot",
        "could",
        "couldn",
        "did",
        "didn",
        "do",
        "does",
        "doesn",
        "doing",
        "don",
        "down",
        "during",
        "each",
        "either",
        "else",
        "ever",
        "every",
        "few",
        "for",
        "from",
        "further",
        "get",
        "gets",
        "got",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "isn",
        "it",
        "its",
        "itself",
        "just",
        "let",
        "ll",
        "me",
        "might",
        "more",
        "most",
        "must",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "one",
        "only",
        "or",
        "other",
        "ought",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "re",
        "s",
        "same",
        "shall",
        "she",
        "should",
        "so",
        "some",
        "such",
        "t",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "upon",
        "us",
        "ve",
        "very",
        "was",
        "wasn",
        "we",
        "were",
        "weren",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "within",
        "without",
        "won",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "anyone",
        "anything",
        "someone",
        "something",
        "thing",
        "things",
        "kind",
        "sort",
        "really",
        "maybe",
        "think",
        "remember",
        "remembered",
        "recall",
        "looking",
        "look",
        "find",
        "finding",
        "search",
        "searching",
        "want",
        "wanted",
        "need",
        "know",
        "knew",
        "tell",
        "called",
        "named",
        "name",
        "title",
        "please",
        "help",
        "like",
        "hi",
        "hello",
        "thanks",
    ]
)

# Portuguese stop words (accents folded), and the request words of questions.
STOPWORDS_PT = frozenset(
    [
        "a",
        "ao",
        "aos",
        "aquela",
        "aquelas",
        "aquele",
        "aqueles",
        "aquilo",
        "as",
        "ate",
        "com",
        "como",
        "da",
        "das",
        "de",
        "dela",
        "delas",
        "dele",
        "deles",
        "depois",
        "do",
        "dos",
        "e",
        "ela",
        "elas",
        "ele",
        "eles",
        "em",
        "entre",
        "era",
        "eram",
        "essa",
        "essas",
        "esse",
        "esses",
        "esta",
        "estas",
        "este",
        "estes",
        "eu",
        "foi",
        "for",
        "foram",
        "ha",
        "isso",
        "isto",
        "ja",
        "la",
        "lhe",
        "lhes",
        "mais",
        "mas",
        "me",
        "mesmo",
        "meu",
        "meus",
        "minha",
        "minhas",
        "muito",
        "na",
        "nas",
        "nao",
        "nem",
        "no",
        "nos",
        "nossa",
        "nossas",
        "nosso",
        "nossos",
        "num",
        "numa",
        "o",
        "os",
        "ou",
        "para",
        "pela",
        "pelas",
        "pelo",
        "pelos",
        "por",
        "qual",
        "quando",
        "que",
        "quem",
        "se",
        "seja",
        "sem",
        "ser",
        "seu",
        "seus",
        "so",
        "sua",
        "suas",
        "tambem",
        "te",
        "tem",
        "tinha",
        "ter",
        "teu",
        "tua",
        "um",
        "uma",
        "umas",
        "uns",
        "voce",
        "voces",
        "vos",
        "sobre",
        "onde",
        "cujo",
        "cuja",
        "sao",
        "esta",
        "estao",
        "procuro",
        "procurando",
        "lembro",
        "lembrar",
        "lembra",
        "acho",
        "qualquer",
        "coisa",
        "algo",
        "alguem",
        "chamado",
        "chamada",
        "nome",
        "titulo",
        "queria",
        "quero",
        "gostaria",
        "encontrar",
        "achar",
        "sei",
        "saber",
        "diga",
        "fale",
        "conte",
    ]
)

STOPWORDS = STOPWORDS_EN | STOPWORDS_PT

# Portuguese -> English for words users put in questions about products (accents folded). The catalog
# is English, so a Portuguese question only matches through proper names and these words. Kept small
# and hand-checked; extend it in one place. Values may hold several words ("receitas" -> recipes cooking).
PT_EN: dict[str, str] = {
    "livro": "book",
    "livros": "books",
    "filme": "movie film",
    "filmes": "movies films",
    "historia": "story",
    "historias": "stories",
    "conto": "tale story",
    "contos": "tales stories",
    "romance": "novel romance",
    "romances": "novels",
    "autor": "author",
    "autora": "author",
    "escritor": "writer",
    "escreveu": "wrote",
    "escrito": "written",
    "ilustrado": "illustrated",
    "ilustracoes": "illustrations",
    "poemas": "poems",
    "poesia": "poetry",
    "biografia": "biography",
    "memorias": "memoir",
    "guia": "guide",
    "viagem": "travel journey",
    "receita": "recipe",
    "receitas": "recipes cooking",
    "cozinha": "kitchen cooking cookbook",
    "culinaria": "cooking",
    "brinquedo": "toy",
    "brinquedos": "toys",
    "jogo": "game",
    "jogos": "games",
    "boneca": "doll",
    "bola": "ball",
    "madeira": "wooden wood",
    "pecas": "pieces",
    "torre": "tower",
    "arco": "rainbow",
    "iris": "rainbow",
    "musica": "music",
    "musicas": "songs music",
    "cancao": "song",
    "cancoes": "songs",
    "album": "album",
    "disco": "album record",
    "banda": "band",
    "cantor": "singer singing",
    "cantora": "singer singing",
    "cantando": "singing",
    "canta": "sings singing",
    "cantor(a)": "singer",
    "ao vivo": "live",
    "vivo": "live",
    "gravado": "recorded",
    "igreja": "church",
    "irmas": "sisters",
    "irmaos": "brothers",
    "irma": "sister",
    "irmao": "brother",
    "documentario": "documentary",
    "serie": "series",
    "temporada": "season",
    "dirigido": "directed",
    "narrado": "narrated",
    "astronomos": "astronomers",
    "observatorio": "observatory",
    "deserto": "desert",
    "cometa": "comet",
    "estrela": "star",
    "estrelas": "stars",
    "planeta": "planet",
    "espaco": "space",
    "lua": "moon",
    "sol": "sun",
    "ceu": "sky",
    "noite": "night",
    "inverno": "winter",
    "verao": "summer",
    "outono": "autumn fall",
    "primavera": "spring",
    "tempestade": "storm",
    "mar": "sea",
    "oceano": "ocean",
    "ilha": "island",
    "farol": "lighthouse",
    "faroleiro": "lighthouse keeper",
    "navio": "ship",
    "barco": "boat",
    "naufragio": "wreck shipwreck",
    "porto": "harbour harbor port",
    "praia": "beach",
    "rio": "river",
    "lago": "lake",
    "montanha": "mountain",
    "montanhas": "mountains",
    "floresta": "forest",
    "cidade": "city",
    "vila": "village",
    "aldeia": "village",
    "fazenda": "farm",
    "castelo": "castle",
    "escola": "school",
    "casa": "house home",
    "jardim": "garden",
    "guerra": "war",
    "paz": "peace",
    "amor": "love",
    "morte": "death",
    "vida": "life",
    "sonho": "dream",
    "sonhos": "dreams",
    "segredo": "secret",
    "segredos": "secrets",
    "misterio": "mystery",
    "assassinato": "murder",
    "crime": "crime",
    "detetive": "detective",
    "fantasma": "ghost",
    "bruxa": "witch",
    "magia": "magic",
    "magico": "magic wizard",
    "dragao": "dragon",
    "vampiro": "vampire",
    "tesouro": "treasure",
    "pirata": "pirate",
    "piratas": "pirates",
    "aventura": "adventure",
    "aventuras": "adventures",
    "heroi": "hero",
    "rei": "king",
    "rainha": "queen",
    "principe": "prince",
    "princesa": "princess",
    "cavaleiro": "knight",
    "soldado": "soldier",
    "guerreiro": "warrior",
    "vaqueiro": "cowboy",
    "caubói": "cowboy",
    "caubois": "cowboys",
    "faroeste": "western",
    "xerife": "sheriff",
    "cavalo": "horse",
    "cavalos": "horses",
    "gato": "cat",
    "gatos": "cats",
    "gatinho": "kitten",
    "gatinhos": "kittens",
    "gata": "cat",
    "cachorro": "dog",
    "cao": "dog",
    "caes": "dogs",
    "cachorros": "dogs",
    "filhote": "puppy",
    "cachorrinho": "puppy",
    "passaro": "bird",
    "passaros": "birds",
    "peixe": "fish",
    "urso": "bear",
    "lobo": "wolf",
    "leao": "lion",
    "ovelha": "sheep",
    "ovelhas": "sheep",
    "vaca": "cow",
    "coelho": "rabbit",
    "rato": "mouse",
    "menino": "boy",
    "meninos": "boys",
    "menina": "girl",
    "meninas": "girls",
    "crianca": "child children kids",
    "criancas": "children kids",
    "bebe": "baby",
    "infantil": "children kids",
    "homem": "man",
    "homens": "men",
    "mulher": "woman",
    "mulheres": "women",
    "pai": "father",
    "mae": "mother",
    "filho": "son",
    "filha": "daughter",
    "filhos": "children sons",
    "avo": "grandmother grandfather",
    "familia": "family",
    "amigo": "friend",
    "amigos": "friends",
    "jovem": "young",
    "velho": "old",
    "velha": "old",
    "novo": "new",
    "pequeno": "small little",
    "pequena": "small little",
    "grande": "big large",
    "primeiro": "first",
    "segundo": "second",
    "terceiro": "third",
    "ultimo": "last",
    "sozinho": "alone",
    "sozinha": "alone",
    "perdido": "lost",
    "perdida": "lost",
    "desaparece": "disappears",
    "desaparecido": "missing disappeared",
    "pais": "country",
    "dormir": "sleep",
    "sono": "sleep",
    "sonolento": "sleepy",
    "sonolentos": "sleepy",
    "contar": "count",
    "conta": "counts",
    "sete": "seven",
    "doze": "twelve",
    "dois": "two",
    "tres": "three",
    "anos": "years",
    "ano": "year",
    "idade": "ages age",
    "paginas": "pages",
    "cozinheiro": "cook",
    "panela": "pan pot",
    "frigideira": "pan skillet",
    "faca": "knife",
    "facas": "knives",
    "cobre": "copper",
    "aco": "steel",
    "inoxidavel": "stainless",
    "alho": "garlic",
    "prensa": "press",
    "espremedor": "press",
    "cafe": "coffee",
    "cha": "tea",
    "vinho": "wine",
    "pao": "bread",
    "bolo": "cake",
    "torta": "pie",
    "sopa": "soup",
    "caranguejo": "crab",
    "maca": "apple",
    "amora": "blackberry",
    "roupa": "clothing clothes",
    "camisa": "shirt",
    "camiseta": "shirt",
    "vestido": "dress",
    "sapato": "shoe",
    "sapatos": "shoes",
    "casaco": "coat jacket",
    "jaqueta": "jacket",
    "calca": "pants trousers",
    "algodao": "cotton",
    "tamanho": "size",
    "cor": "colour color",
    "azul": "blue",
    "vermelho": "red",
    "verde": "green",
    "amarelo": "yellow",
    "preto": "black",
    "branco": "white",
    "rosa": "pink",
    "dancar": "dance",
    "danca": "dance",
    "bale": "ballet",
    "saia": "skirt tutu",
    "computador": "computer",
    "programacao": "programming",
    "aprender": "learn",
    "ensina": "teaches",
    "iniciantes": "beginners",
    "exercicios": "exercises",
    "carro": "car",
    "trem": "train",
    "aviao": "plane airplane",
    "robo": "robot",
    "mapa": "map",
    "arte": "art",
    "pintura": "painting",
    "fotografia": "photography",
    "fotos": "photos",
    "religiao": "religion",
    "deus": "god",
    "sabedoria": "wisdom",
    "profeta": "prophet",
    "filosofia": "philosophy",
    "historia_": "history",
    "seculo": "century",
    "guerra_civil": "civil war",
    "saude": "health",
    "dieta": "diet",
    "exercicio": "exercise",
    "negocios": "business",
    "dinheiro": "money",
}
# "historia" is both story and history: questions use it for both.
PT_EN["historia"] = "story history"
del PT_EN["historia_"], PT_EN["guerra_civil"], PT_EN["ao vivo"], PT_EN["cantor(a)"]

_TOKEN = re.compile(r"[a-z0-9]+")
_COMBINING = re.compile("[\u0300-\u036f]")


def fold(text: str) -> str:
    """Lower case with accents removed ("Ação" -> "acao"); apostrophes vanish ("Mog's" -> "mogs").

    Decomposed (NFKD), accents dropped, then encoded to ASCII with "?" for what is left (dashes,
    other scripts): all in C, ~20x faster than filtering characters in Python; "?" separates tokens.
    """
    text = text.lower().replace("'", "").replace("\u2019", "")
    if not text.isascii():
        text = (
            _COMBINING.sub("", unicodedata.normalize("NFKD", text)).encode("ascii", "replace").decode("ascii")
        )
    return text


def stem(word: str) -> str:
    """A light English stemmer: plurals, -ing/-ed, a final -e and doubled consonants.

    Deliberately conservative (no -er, -ly, -ation rules): "singing"/"sings" -> "sing",
    "horses"/"horse" -> "hors", "stories"/"story" -> "story", "loved"/"love" -> "lov",
    "boxes" -> "box". Words of three letters or fewer and numbers are kept as they are.
    """
    if len(word) <= 3 or word.isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        stem_part = word[: -len(suffix)]
        if (
            word.endswith(suffix)
            and len(stem_part) >= 3
            and not word.endswith("eed")
            and any(v in stem_part for v in "aeiouy")
        ):
            word = stem_part
            if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # running -> runn -> run
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


class Analyzer:
    """Text -> index terms, with a cache: real catalogs repeat the same words millions of times."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def term(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is None:
            cached = "" if (token in STOPWORDS or len(token) < 2) else stem(token)
            if len(self._cache) < 2_000_000:
                self._cache[token] = cached
        return cached

    def terms(self, text: str) -> list[str]:
        term = self.term
        return [t for t in (term(tok) for tok in _TOKEN.findall(fold(text))) if t]


_QUERY_ANALYZER = Analyzer()


def query_terms(question: str, translate: bool = True) -> list[str]:
    """Terms of a question: Portuguese words mapped to English (the original kept too), then analysed."""
    tokens = _TOKEN.findall(fold(question))
    words: list[str] = []
    for tok in tokens:
        mapped = PT_EN.get(tok) if translate else None
        if mapped:
            words.extend(mapped.split())
        else:
            words.append(tok)
    term = _QUERY_ANALYZER.term
    return [t for t in (term(w) for w in words) if t]


def term_hash(term: str) -> int:
    """Signed 64-bit hash of a term (blake2b): stable across runs and machines, unlike hash()."""
    return int.from_bytes(
        hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


# --------------------------------------------------------------------------- building segments


@dataclass
class SegmentArrays:
    terms: list[str]
    hashes: np.ndarray
    indptr: np.ndarray
    docs: np.ndarray
    impact: np.ndarray
    ids: np.ndarray
    doc_len_sum: int
    champ_indptr: np.ndarray
    champ_docs: np.ndarray
    champ_impact: np.ndarray


def build_segment(
    rows: Iterable[tuple[int, str, str]],
    *,
    avgdl: float | None = None,
    k1: float = K1,
    b: float = B,
    title_weight: int = TITLE_WEIGHT,
    champions: int | None = None,
) -> SegmentArrays:
    """Postings of (faiss_id, title, content) rows. `avgdl`: use this average length (delta segments
    share the base's) instead of the segment's own."""
    part = _tokenize_part(rows, title_weight)
    return _segment_from_parts([part], avgdl=avgdl, k1=k1, b=b, champions=champions)


@dataclass
class _Part:
    """The postings of one run of documents (consecutive in faiss-id order), terms in hash order."""

    terms: list[str]  # sorted by hash
    hashes: np.ndarray  # int64, ascending
    term: np.ndarray  # int32 per posting: index into `terms`; postings sorted by (term, doc)
    docs: np.ndarray  # int32 per posting: document number within the part
    tf: np.ndarray  # uint16 per posting
    lens: np.ndarray  # int64 per document: indexed tokens (title ones counted title_weight times)
    ids: np.ndarray  # int64 per document: faiss id


def _tokenize_part(rows: Iterable[tuple[int, str, str]], title_weight: int = TITLE_WEIGHT) -> _Part:
    """Analyse (faiss_id, title, content) rows into a `_Part` (the Python-heavy half of a build)."""
    analyzer = Analyzer()
    vocab: dict[str, int] = {}  # term -> term id
    tok2id: dict[str, int] = {}  # raw token -> term id, or -1 for a stop word (C-speed lookups via map)
    ids: list[int] = []
    lens_parts: list[np.ndarray] = []
    keys_parts: list[np.ndarray] = []
    tf_parts: list[np.ndarray] = []
    flat: list[int] = []
    chunk_counts: list[int] = []  # raw tokens per document (stop words included)
    chunk_start = 0
    findall = _TOKEN.findall
    get = tok2id.get

    def resolve(tokens: list[str], mapped: list[int | None]) -> list[int]:
        """Give the tokens not seen before their ids, in place; returns `mapped`, now without a None."""
        for i, tid in enumerate(mapped):
            if tid is None:
                term = analyzer.term(tokens[i])
                mapped[i] = tok2id[tokens[i]] = vocab.setdefault(term, len(vocab)) if term else -1
        return cast("list[int]", mapped)

    def flush() -> None:
        nonlocal flat, chunk_counts, chunk_start
        if chunk_counts:
            n = len(chunk_counts)
            term_ids = np.fromiter(flat, dtype=np.int64, count=len(flat))
            doc_nums = np.repeat(
                np.arange(chunk_start, chunk_start + n, dtype=np.int64),
                np.asarray(chunk_counts, dtype=np.int64),
            )
            keep = term_ids >= 0
            term_ids, doc_nums = term_ids[keep], doc_nums[keep]
            lens_parts.append(np.bincount(doc_nums - chunk_start, minlength=n).astype(np.int64))
            keys, counts = np.unique((term_ids << 32) | doc_nums, return_counts=True)
            keys_parts.append(keys)
            tf_parts.append(np.minimum(counts, 65535).astype(np.uint16))
            chunk_start += n
        flat, chunk_counts = [], []

    for faiss_id, title, content in rows:
        tokens = findall(fold(title))
        found = list(map(get, tokens))
        mapped = resolve(tokens, found) if None in found else cast("list[int]", found)
        count = len(mapped) * title_weight
        for _ in range(title_weight):
            flat.extend(mapped)
        if content:
            tokens = findall(fold(content))
            found = list(map(get, tokens))
            mapped = resolve(tokens, found) if None in found else cast("list[int]", found)
            flat.extend(mapped)
            count += len(mapped)
        chunk_counts.append(count)
        ids.append(int(faiss_id))
        if len(chunk_counts) >= CHUNK_DOCS:
            flush()
    flush()
    lens = np.concatenate(lens_parts) if lens_parts else np.zeros(0, np.int64)

    terms = list(vocab)
    hashes = np.fromiter((term_hash(t) for t in terms), dtype=np.int64, count=len(terms))
    order = np.argsort(hashes, kind="stable")
    if len(np.unique(hashes)) != len(hashes):  # pragma: no cover - 64-bit collision, ~1e-7 at 1e6 terms
        raise RuntimeError("two terms share a 64-bit hash; report this (the term hash must change)")
    rank = np.empty(len(terms), dtype=np.int64)
    rank[order] = np.arange(len(terms), dtype=np.int64)
    if keys_parts:
        keys = np.concatenate([(rank[k >> 32] << 32) | (k & 0xFFFFFFFF) for k in keys_parts])
        tf = np.concatenate(tf_parts)
        del keys_parts, tf_parts
        sort = np.argsort(keys, kind="stable")
        keys, tf = keys[sort], tf[sort]
        del sort
    else:
        keys, tf = np.zeros(0, np.int64), np.zeros(0, np.uint16)
    return _Part(
        terms=[terms[i] for i in order],
        hashes=hashes[order],
        term=(keys >> 32).astype(np.int32),  # int32: half the bytes a worker sends back
        docs=(keys & 0xFFFFFFFF).astype(np.int32),
        tf=tf,
        lens=lens,
        ids=np.asarray(ids, dtype=np.int64),
    )


def _segment_from_parts(
    parts: Sequence[_Part],
    *,
    avgdl: float | None = None,
    k1: float = K1,
    b: float = B,
    champions: int | None = None,
) -> SegmentArrays:
    """Merge parts (consecutive runs of documents, in order) into one segment: the same arrays as one part.

    The terms of all parts are merged in hash order; each term's postings are those of part 0, then
    part 1, ... (documents ascending, as the parts follow each other), placed by counting, not sorting.
    """
    if len(parts) == 1:
        only = parts[0]
        terms, hashes = only.terms, only.hashes
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(only.term, minlength=len(terms)), out=indptr[1:])
        docs = only.docs.astype(np.int32)
        tf = only.tf
    else:
        hashes, inverse = np.unique(np.concatenate([p.hashes for p in parts]), return_inverse=True)
        slots: list[str | None] = [None] * len(hashes)
        start = 0
        maps = []
        for p in parts:
            where = inverse[start : start + len(p.hashes)]
            start += len(p.hashes)
            maps.append(where)
            for slot, term in zip(where.tolist(), p.terms, strict=True):
                seen = slots[slot]
                if seen is None:
                    slots[slot] = term
                elif seen != term:  # pragma: no cover - 64-bit collision, ~1e-7 at 1e6 terms
                    raise RuntimeError(
                        "two terms share a 64-bit hash; report this (the term hash must change)"
                    )
        terms = slots  # type: ignore[assignment]
        counts = [
            np.bincount(where[p.term], minlength=len(hashes)) for p, where in zip(parts, maps, strict=True)
        ]
        df = np.sum(counts, axis=0) if counts else np.zeros(len(hashes), np.int64)
        indptr = np.zeros(len(hashes) + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        total = int(indptr[-1])
        docs = np.empty(total, dtype=np.int32)
        tf = np.empty(total, dtype=np.uint16)
        before = indptr[:-1].copy()  # where the next part's postings of each term go
        offset = 0
        for p, where, count in zip(parts, maps, counts, strict=True):
            g = where[p.term]
            local_start = np.zeros(len(hashes), dtype=np.int64)
            np.cumsum(count[:-1], out=local_start[1:])
            pos = before[g] + (np.arange(len(g), dtype=np.int64) - local_start[g])
            docs[pos] = p.docs + offset
            tf[pos] = p.tf
            before += count
            offset += len(p.ids)
    lens = np.concatenate([p.lens for p in parts])
    ids = np.concatenate([p.ids for p in parts])
    n_docs = len(ids)
    doc_len = np.asarray(lens, dtype=np.float32)
    total_len = int(doc_len.sum())
    if avgdl is None:
        avgdl = total_len / n_docs if n_docs else 1.0
    avgdl = max(float(avgdl), 1.0)
    tf32 = tf.astype(np.float32)
    norm = k1 * (1.0 - b + b * doc_len[docs] / avgdl)
    impact = (tf32 * (k1 + 1.0) / (tf32 + norm)).astype(np.float16)
    del tf32, norm
    champ_indptr, champ_docs, champ_impact = champion_lists(
        indptr, docs, impact, CHAMPIONS if champions is None else champions
    )
    return SegmentArrays(
        list(terms),
        hashes,
        indptr,
        docs,
        impact,
        ids,
        total_len,
        champ_indptr,
        champ_docs,
        champ_impact,
    )


PARALLEL_MIN_DOCS = 200_000  # smaller tables are tokenised in this process
_PARTS_PER_WORKER = 2


def _part_of_db(meta_db_path: str, low: int | None, high: int | None, title_weight: int) -> _Part:
    """In a worker process: the `_Part` of the rows with low <= faiss_id < high."""
    clauses, params = [], []
    if low is not None:
        clauses.append("faiss_id >= ?")
        params.append(low)
    if high is not None:
        clauses.append("faiss_id < ?")
        params.append(high)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    return _tokenize_part(_meta_rows(Path(meta_db_path), where, params), title_weight)


def lexical_workers(docs: int) -> int:
    """Processes for a build of `docs` documents: 0 below PARALLEL_MIN_DOCS or on < 4 cores, else the cores (<= 16)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(16, cores) if docs >= PARALLEL_MIN_DOCS and cores >= 4 else 0


def build_segment_from_db(
    meta_db_path: Path, *, champions: int | None = None, workers: int | None = None
) -> SegmentArrays:
    """`build_segment` over every row of a meta.sqlite, tokenised by `workers` processes (None: `lexical_workers`).

    The rows are cut into runs of consecutive faiss ids, one task each; the result is the same
    segment as `build_segment(_meta_rows(meta_db_path))`, array for array.
    """
    conn = sqlite3.connect(f"file:{Path(meta_db_path).as_posix()}?mode=ro", uri=True)
    try:
        docs = int(conn.execute("SELECT count(*) FROM rows").fetchone()[0])
        if workers is None:
            workers = lexical_workers(docs)
        tasks = max(1, workers * _PARTS_PER_WORKER) if workers > 1 else 1
        bounds: list[int] = []
        for k in range(1, tasks):
            found = conn.execute(
                "SELECT faiss_id FROM rows ORDER BY faiss_id LIMIT 1 OFFSET ?", (docs * k // tasks,)
            ).fetchone()
            if found is not None and (not bounds or found[0] > bounds[-1]):
                bounds.append(int(found[0]))
    finally:
        conn.close()
    if workers <= 1 or not bounds:
        return build_segment(_meta_rows(Path(meta_db_path)), champions=champions)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    edges: list[int | None] = [None, *bounds, None]
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [
            pool.submit(_part_of_db, str(meta_db_path), edges[i], edges[i + 1], TITLE_WEIGHT)
            for i in range(len(edges) - 1)
        ]
        parts = [f.result() for f in futures]
    return _segment_from_parts(parts, champions=champions)


def champion_lists(
    indptr: np.ndarray, docs: np.ndarray, impact: np.ndarray, champions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every term in more than `champions` documents, its `champions` highest-impact postings
    (doc-sorted); other terms get an empty list. A query accumulates these instead of the whole
    postings of a common word, then computes the exact score of the best candidates."""
    df = np.diff(indptr)
    sizes = np.where(df > champions, champions, 0)
    champ_indptr = np.zeros(len(df) + 1, dtype=np.int64)
    np.cumsum(sizes, out=champ_indptr[1:])
    champ_docs = np.empty(int(champ_indptr[-1]), dtype=np.int32)
    champ_impact = np.empty(int(champ_indptr[-1]), dtype=np.float16)
    for t in np.nonzero(sizes)[0]:
        start, end = int(indptr[t]), int(indptr[t + 1])
        part = impact[start:end]
        best = np.argpartition(-part.astype(np.float32), champions - 1)[:champions]
        best.sort()
        out = slice(int(champ_indptr[t]), int(champ_indptr[t + 1]))
        champ_docs[out] = docs[start + best]
        champ_impact[out] = part[best]
    return champ_indptr, champ_docs, champ_impact


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def write_segment(version_dir: Path, name: str, seg: SegmentArrays) -> list[str]:
    prefix = f"lexical.{name}."
    _save_npy(version_dir / (prefix + "hashes.npy"), seg.hashes)
    (version_dir / (prefix + "terms.json")).write_text(
        json.dumps(seg.terms, ensure_ascii=False), encoding="utf-8"
    )
    _save_npy(version_dir / (prefix + "indptr.npy"), seg.indptr)
    _save_npy(version_dir / (prefix + "docs.npy"), seg.docs)
    _save_npy(version_dir / (prefix + "impact.npy"), seg.impact)
    _save_npy(version_dir / (prefix + "ids.npy"), seg.ids)
    _save_npy(version_dir / (prefix + "champ_indptr.npy"), seg.champ_indptr)
    _save_npy(version_dir / (prefix + "champ_docs.npy"), seg.champ_docs)
    _save_npy(version_dir / (prefix + "champ_impact.npy"), seg.champ_impact)
    return [prefix + f for f in SEGMENT_FILES]


# --------------------------------------------------------------------------- build / update hooks (index/build.py)


def _meta_rows(
    meta_db_path: Path, where: str = "", params: Sequence[Any] = ()
) -> Iterator[tuple[int, str, str]]:
    conn = sqlite3.connect(f"file:{Path(meta_db_path).as_posix()}?mode=ro", uri=True)
    try:
        cursor = conn.execute(
            f"SELECT faiss_id, title, content FROM rows {where} ORDER BY faiss_id", tuple(params)
        )
        while True:
            batch = cursor.fetchmany(10_000)
            if not batch:
                return
            yield from batch
    finally:
        conn.close()


def _write_meta(version_dir: Path, meta: dict[str, Any]) -> str:
    (version_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return META_NAME


def build_artifacts(meta_db_path: str | Path, version_dir: str | Path, config: Any = None) -> list[str]:
    """Build the description index of a version from its meta.sqlite; return the file names written.

    Called by `index.build.build_index` once the metadata is final; the names go into the manifest.
    """
    started = time.perf_counter()
    version_dir = Path(version_dir)
    seg_champions = CHAMPIONS
    seg = build_segment_from_db(Path(meta_db_path), champions=seg_champions)
    names = write_segment(version_dir, "base", seg)
    _save_npy(version_dir / TOMBSTONES_NAME, np.zeros(0, dtype=np.int64))
    n = len(seg.ids)
    meta = {
        "format": FORMAT,
        "k1": K1,
        "b": B,
        "title_weight": TITLE_WEIGHT,
        "champions": seg_champions,
        "analyzer": "fold+stop(en,pt)+light-stem",
        "avgdl": (seg.doc_len_sum / n) if n else 1.0,
        "segments": {"base": {"docs": n, "terms": len(seg.terms), "postings": len(seg.docs)}},
        "tombstones": 0,
        "built_seconds": round(time.perf_counter() - started, 3),
    }
    log.info(
        "description index: %d docs, %d terms, %d postings in %.1fs",
        n,
        len(seg.terms),
        len(seg.docs),
        time.perf_counter() - started,
    )
    return [_write_meta(version_dir, meta), *names, TOMBSTONES_NAME]


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (a committed version's files never change, so sharing the inode is safe), else copy."""
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _faiss_ids_of(db: Path, uids: Sequence[str]) -> list[int]:
    """The faiss ids of these uids in the metadata database `db` (read-only, 900 uids a query)."""
    out: list[int] = []
    conn = sqlite3.connect(f"file:{db.as_posix()}?mode=ro", uri=True)
    try:
        uids = list(uids)
        for i in range(0, len(uids), 900):
            part = uids[i : i + 900]
            out += [
                int(r[0])
                for r in conn.execute(
                    f"SELECT faiss_id FROM rows WHERE uid IN ({','.join('?' * len(part))})", part
                )
            ]
    finally:
        conn.close()
    return out


def _rows_by_id(db: Path, id_list: list[int]) -> list[tuple[int, str, str]]:
    """(faiss_id, title, content) of these faiss ids in the metadata database `db` (read-only)."""
    rows: list[tuple[int, str, str]] = []
    conn = sqlite3.connect(f"file:{db.as_posix()}?mode=ro", uri=True)
    try:
        for i in range(0, len(id_list), 900):
            part = id_list[i : i + 900]
            rows += conn.execute(
                f"SELECT faiss_id, title, content FROM rows WHERE faiss_id IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
    finally:
        conn.close()
    return rows


def update_artifacts(
    meta_db_path: str | Path,
    version_dir: str | Path,
    parent_dir: str | Path,
    changed_uids: Sequence[str],
    deleted_uids: Sequence[str],
    config: Any = None,
) -> list[str]:
    """Incremental update: keep the parent's base (hard links), rebuild the small delta, extend tombstones.

    `changed_uids` (inserted or changed rows) are read back from the new meta.sqlite; `deleted_uids`
    are gone from it, so their faiss_ids are derived from the parent's metadata.
    Falls back to a full build when the parent has no description index or the delta grows past
    COMPACT_FRACTION of the base.
    """
    version_dir, parent_dir, meta_db_path = Path(version_dir), Path(parent_dir), Path(meta_db_path)
    parent_meta_path = parent_dir / META_NAME
    if not parent_meta_path.exists():
        return build_artifacts(meta_db_path, version_dir, config)
    parent_meta = json.loads(parent_meta_path.read_text(encoding="utf-8"))
    if parent_meta.get("format") != FORMAT:
        return build_artifacts(meta_db_path, version_dir, config)
    started = time.perf_counter()
    base_docs = int(parent_meta["segments"]["base"]["docs"])

    changed_ids = _faiss_ids_of(meta_db_path, changed_uids)
    deleted_ids = _faiss_ids_of(parent_dir / "meta.sqlite", deleted_uids)
    old_tomb = np.load(parent_dir / TOMBSTONES_NAME, allow_pickle=False)
    tomb = np.union1d(old_tomb, np.asarray(changed_ids + deleted_ids, dtype=np.int64))
    old_delta_ids: np.ndarray = np.zeros(0, np.int64)
    if "delta" in parent_meta["segments"]:
        old_delta_ids = np.load(parent_dir / "lexical.delta.ids.npy", allow_pickle=False)
    # the delta holds every row changed since the base was built that still exists
    delta_ids = np.setdiff1d(
        np.union1d(old_delta_ids, np.asarray(changed_ids, dtype=np.int64)),
        np.asarray(deleted_ids, dtype=np.int64),
    )
    if (
        base_docs == 0
        or len(delta_ids) > COMPACT_FRACTION * base_docs
        or len(tomb) > COMPACT_FRACTION * base_docs
    ):
        log.info(
            "description index: compacting (delta %d rows, %d tombstones, base %d docs)",
            len(delta_ids),
            len(tomb),
            base_docs,
        )
        return build_artifacts(meta_db_path, version_dir, config)

    names: list[str] = []
    for f in SEGMENT_FILES:
        name = f"lexical.base.{f}"
        _link_or_copy(parent_dir / name, version_dir / name)
        names.append(name)
    segments = {"base": parent_meta["segments"]["base"]}
    if len(delta_ids):
        rows = sorted(_rows_by_id(meta_db_path, [int(i) for i in delta_ids]))
        seg = build_segment(
            rows,
            avgdl=float(parent_meta["avgdl"]),
            k1=float(parent_meta["k1"]),
            b=float(parent_meta["b"]),
            title_weight=int(parent_meta["title_weight"]),
            champions=int(parent_meta.get("champions", CHAMPIONS)),
        )
        names += write_segment(version_dir, "delta", seg)
        segments["delta"] = {"docs": len(seg.ids), "terms": len(seg.terms), "postings": len(seg.docs)}
    _save_npy(version_dir / TOMBSTONES_NAME, tomb)
    meta = dict(
        parent_meta,
        segments=segments,
        tombstones=len(tomb),
        updated_seconds=round(time.perf_counter() - started, 3),
    )
    return [_write_meta(version_dir, meta), *names, TOMBSTONES_NAME]


# --------------------------------------------------------------------------- searching


class _Segment:
    """One segment's arrays, memory-mapped: only the postings a query touches are read."""

    def __init__(self, version_dir: Path, name: str, mmap: bool = True) -> None:
        mode: Literal["r"] | None = "r" if mmap else None
        prefix = version_dir / f"lexical.{name}."

        def load(suffix: str) -> np.ndarray:
            # a plain ndarray over the mapping (which it keeps open): slices of an np.memmap are memmaps
            # too, and their per-operation bookkeeping cost ~0.3 ms over the ~60 array operations of a query
            return np.asarray(np.load(f"{prefix}{suffix}", allow_pickle=False, mmap_mode=mode))

        self.name = name
        self.hashes = np.load(f"{prefix}hashes.npy", allow_pickle=False)
        self.indptr = load("indptr.npy")
        self.docs = load("docs.npy")
        self.impact = load("impact.npy")
        self.ids = load("ids.npy")
        self.champ_indptr = load("champ_indptr.npy")
        self.champ_docs = load("champ_docs.npy")
        self.champ_impact = load("champ_impact.npy")
        self.n_docs = len(self.ids)
        if len(self.indptr) != len(self.hashes) + 1 or len(self.docs) != len(self.impact):
            raise ValueError(
                f"{prefix}*.npy: array lengths disagree (hashes {len(self.hashes)}, indptr "
                f"{len(self.indptr)}, docs {len(self.docs)}, impact {len(self.impact)}); rebuild the index"
            )
        self.alive: np.ndarray | None = None  # False for documents hidden by tombstones
        self._local = threading.local()

    def span(self, h: int) -> tuple[int, int, int, int]:
        """(start, end) of the term's postings and (start, end) of its champion list; zeros when absent."""
        i = int(np.searchsorted(self.hashes, h))
        if i < len(self.hashes) and int(self.hashes[i]) == h:
            return (
                int(self.indptr[i]),
                int(self.indptr[i + 1]),
                int(self.champ_indptr[i]),
                int(self.champ_indptr[i + 1]),
            )
        return 0, 0, 0, 0

    def accumulator(self) -> np.ndarray:
        acc = getattr(self._local, "acc", None)
        if acc is None:  # one zeroed buffer per thread, reset after every query (only where it was touched)
            acc = self._local.acc = np.zeros(self.n_docs, dtype=np.float32)
        return acc


class LexicalIndex:
    """The description index of one version: `search(question, k)` -> [(faiss_id, score, snippet)]."""

    def __init__(self, version_dir: str | Path, *, mmap: bool = True) -> None:
        self.path = Path(version_dir)
        meta_path = self.path / META_NAME
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{meta_path}: no description index in this version; rebuild with "
                "`rag index build` (index.descriptions must be true)"
            )
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            raise ValueError(
                f"{meta_path}: description index format {self.meta.get('format')}, this code reads "
                f"{FORMAT}; rebuild with `rag index build`"
            )
        self.k1 = float(self.meta["k1"])
        self.segments = [
            _Segment(self.path, name, mmap) for name in ("base", "delta") if name in self.meta["segments"]
        ]
        self.n_docs = sum(s.n_docs for s in self.segments)
        tomb = np.load(self.path / TOMBSTONES_NAME, allow_pickle=False)
        if len(tomb) and self.segments:
            base = self.segments[0]
            base.alive = ~np.isin(np.asarray(base.ids), tomb)
            self.n_docs -= int((~base.alive).sum())

    # ---------------------------------------------------------------- scoring

    def score(
        self,
        terms: Sequence[str],
        k: int,
        *,
        max_postings: int = DEFAULT_MAX_POSTINGS,
        rescore: int = DEFAULT_RESCORE,
        exhaustive: bool = False,
    ) -> list[tuple[int, float]]:
        """BM25 top-k (faiss_id, score) for analysed query terms, best first.

        Terms are taken rarest first and their postings accumulated, a common term (more than
        CHAMPIONS documents) through its champion list only, until `max_postings` postings have
        been accumulated. When anything was left out, the `rescore` best candidates get their exact
        BM25 over every term (binary search in the doc-sorted postings). Exhaustive when all terms
        are rare; tests check it against a brute-force BM25, and bench_lexical.py reports how often
        the pruned best score equals the exhaustive one. `exhaustive=True` scores every posting.
        """
        if exhaustive:
            max_postings = 2**62
        weights: dict[str, int] = {}
        for t in terms:
            weights[t] = min(weights.get(t, 0) + 1, 2)  # a word repeated in the question counts at most twice
        if not weights or not self.segments or k <= 0:
            return []
        hashes = {t: term_hash(t) for t in weights}
        spans = {t: [seg.span(h) for seg in self.segments] for t, h in hashes.items()}
        n_total = max(sum(s.n_docs for s in self.segments), 1)
        plan = []
        for t, w in weights.items():
            df = sum(sp[1] - sp[0] for sp in spans[t])
            if df == 0:
                continue
            idf = math.log(1.0 + (n_total - df + 0.5) / (df + 0.5))
            plan.append((df, t, idf * w))
        plan.sort()
        results: list[tuple[int, float]] = []
        for si, seg in enumerate(self.segments):
            results += self._score_segment(
                seg, [(spans[t][si], wt) for _, t, wt in plan], k, max_postings, rescore, not exhaustive
            )
        results.sort(key=lambda r: -r[1])
        return results[:k]

    @staticmethod
    def _score_segment(
        seg: _Segment,
        plan: list[tuple[tuple[int, int, int, int], float]],
        k: int,
        max_postings: int,
        rescore: int,
        champions: bool = True,
    ) -> list[tuple[int, float]]:
        acc = seg.accumulator()
        touched: list[np.ndarray] = []
        scored = 0
        exhaustive = True
        try:
            for (start, end, c_start, c_end), weight in plan:
                if end <= start:
                    continue
                if champions and c_end > c_start:  # a common term: its best postings only
                    docs_arr, imp_arr, lo, hi = seg.champ_docs, seg.champ_impact, c_start, c_end
                    exhaustive = False
                else:
                    docs_arr, imp_arr, lo, hi = seg.docs, seg.impact, start, end
                if scored and scored + (hi - lo) > max_postings:
                    exhaustive = False
                    continue
                docs = np.asarray(docs_arr[lo:hi])
                part = weight * np.asarray(imp_arr[lo:hi], dtype=np.float32)
                if not touched:  # the buffer is all zeros: every document is fresh, 0 + x == x
                    acc[docs] = part
                    fresh = docs
                else:  # one gather for both uses (`acc[docs] += x` gathers again); a term's docs are unique
                    before = acc[docs]
                    fresh = docs[before == 0.0]  # impacts are > 0, so 0 means "not touched yet"
                    acc[docs] = before + part
                touched.append(fresh)
                scored += hi - lo
            if not touched:
                return []
            cand = np.concatenate(touched) if len(touched) > 1 else touched[0]
            vals = acc[cand]
            if seg.alive is not None:
                vals = np.where(seg.alive[cand], vals, 0.0).astype(np.float32)
            if not exhaustive:
                if len(cand) > rescore:
                    top = np.argpartition(-vals, rescore - 1)[:rescore]
                    cand = cand[top]
                cand = np.sort(cand)
                vals = np.zeros(len(cand), dtype=np.float32)
                for (start, end, _, _), weight in plan:  # exact BM25 of the candidates over every term
                    if end <= start:
                        continue
                    docs = seg.docs[start:end]
                    pos = np.minimum(np.searchsorted(docs, cand), end - start - 1)  # past the end: no match
                    hit = docs[pos] == cand
                    if hit.any():
                        vals[hit] += weight * seg.impact[start:end][pos[hit]].astype(np.float32)
                if seg.alive is not None:
                    vals = np.where(seg.alive[cand], vals, 0.0).astype(np.float32)
            keep = vals > 0
            cand, vals = cand[keep], vals[keep]
            if len(cand) > k:
                top = np.argpartition(-vals, k - 1)[:k]
                cand, vals = cand[top], vals[top]
            ids = np.asarray(seg.ids[cand])
            return [(int(i), float(v)) for i, v in zip(ids, vals, strict=True)]
        finally:
            for t in touched:
                acc[t] = 0.0

    def search(
        self,
        question: str,
        k: int = 50,
        *,
        get_rows: Callable[[Sequence[int]], list[Any]] | None = None,
        translate: bool = True,
        max_postings: int = DEFAULT_MAX_POSTINGS,
        snippets: int | None = SNIPPET_ROWS,
        normalize: bool = True,
    ) -> list[tuple[int, float, str]]:
        """Top-k (faiss_id, score, snippet) for a free-form question.

        `normalize`: scores are BM25 divided by `max_score` of the question's terms (in [0, 1]);
        otherwise raw BM25.
        With `get_rows` (e.g. `IndexSnapshot.get_rows`), the first `snippets` results (None: all)
        carry the best-matching passage of their description; the others, and all without
        `get_rows`, have "" (the answerer then picks sentences itself).
        """
        terms = query_terms(question, translate)
        ranked = self.score(terms, k, max_postings=max_postings)
        if not ranked:
            return []
        if (
            normalize
        ):  # share of the best score any row could get for these terms: comparable across questions
            bound = self.max_score(terms) or 1.0
            ranked = [(fid, score / bound) for fid, score in ranked]
        texts = [""] * len(ranked)
        n_snip = len(ranked) if snippets is None else min(snippets, len(ranked))
        if get_rows is not None and n_snip:
            rows = get_rows([fid for fid, _ in ranked[:n_snip]])
            wanted = set(terms)
            for i, row in enumerate(rows):
                if row is not None and getattr(row, "content", None):
                    texts[i] = best_passage(row.content, wanted)
        return [(fid, score, texts[i]) for i, (fid, score) in enumerate(ranked)]

    def max_score(self, terms: Sequence[str]) -> float:
        """Upper bound of a document's BM25 score for these terms: sum of idf * (k1 + 1)."""
        weights: dict[str, int] = {}
        for t in terms:
            weights[t] = min(weights.get(t, 0) + 1, 2)
        n_total = max(sum(s.n_docs for s in self.segments), 1)
        total = 0.0
        for t, w in weights.items():
            h = term_hash(t)
            df = sum(sp[1] - sp[0] for sp in (seg.span(h) for seg in self.segments))
            if df:
                total += w * math.log(1.0 + (n_total - df + 0.5) / (df + 0.5)) * (self.k1 + 1.0)
        return total


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_SNIPPET_ANALYZER = Analyzer()


def best_passage(content: str, terms: set[str] | Sequence[str], max_chars: int = SNIPPET_CHARS) -> str:
    """The sentence (with its neighbour when short) of `content` that holds the most query terms.

    Ties go to the earlier sentence; "" when no sentence holds any term (the row matched on its title).
    """
    wanted = set(terms)
    if not wanted or not content:
        return ""
    sentences = [s.strip() for s in _SENTENCE.split(content) if s.strip()]
    best, best_hits = -1, 0
    for i, sentence in enumerate(sentences):
        hits = len(wanted.intersection(_SNIPPET_ANALYZER.terms(sentence)))
        if hits > best_hits:
            best, best_hits = i, hits
    if best < 0:
        return ""
    text = sentences[best]
    if len(text) < max_chars // 2 and best + 1 < len(sentences):
        text = f"{text} {sentences[best + 1]}"
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars - 1)
        text = text[: cut if cut > max_chars // 2 else max_chars - 1].rstrip(" ,;:") + "…"
    return text


# --------------------------------------------------------------------------- per-snapshot cache

_OPEN: weakref.WeakKeyDictionary[Any, LexicalIndex | None] = weakref.WeakKeyDictionary()
_OPEN_LOCK = threading.Lock()


def for_snapshot(snapshot: Any) -> LexicalIndex | None:
    """The description index of an IndexSnapshot (opened once, then cached), or None when it has none."""
    try:
        return _OPEN[snapshot]
    except (KeyError, TypeError):
        pass
    with _OPEN_LOCK:
        if snapshot in _OPEN:
            return _OPEN[snapshot]
        path = Path(getattr(snapshot, "path", ""))
        index = None
        if (path / META_NAME).exists():
            arrays = [n for n in getattr(snapshot, "artifacts", []) if n.endswith(".npy")]
            should_map = getattr(snapshot, "should_map", None)
            mmap = should_map(arrays) if should_map is not None else True  # index.mmap, index.mmap_min_bytes
            index = LexicalIndex(path, mmap=mmap)
            if mmap and hasattr(snapshot, "watch_mapped"):
                snapshot.watch_mapped(arrays)  # checked before each search: no SIGBUS from a truncated file
        _OPEN[snapshot] = index
        return index
