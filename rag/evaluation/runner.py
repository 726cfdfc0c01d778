"""Run the serving pipeline over a question file and turn the results into numbers and tables.

    rag eval retrieval --questions eval/sample_questions.jsonl --data ../shared/data/amazontitles/trn_sample.jsonl
    rag eval answers   --questions eval/sample_questions.jsonl --data ../shared/data/amazontitles/trn_sample.jsonl

Everything goes through the same code that serves users (`rag.retrieval.Retriever`,
`rag.pipeline.RAG`), so the figures measure the product, not a copy of it. `prepare_index` builds
(once, cached by file content and index settings) an index for a catalog given with `--data`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.cleaning import clean_title
from rag.config import Config
from rag.evaluation.metrics import contains_all, mean, mrr, needles_to_check, percentile, recall_at_k, rouge_l
from rag.evaluation.questions import ABSENT_KIND, EvalQuestion, QuestionFileError, render_question
from rag.types import Answer, CatalogRow, Hit

log = logging.getLogger(__name__)

RETRIEVAL_KS = (1, 5, 10)


# --------------------------------------------------------------------------- index for --data


def default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "amazontitles-rag" / "eval-indexes"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_key(config: Config, data: Sequence[Path]) -> str:
    """Cache key of an evaluation index: catalog bytes + everything that changes what gets indexed."""
    parts = [_file_digest(p) for p in data]
    # the index package's own source: a cached index built by older code (say, before the
    # description index existed) must not be reused
    import index.build

    parts.extend(
        hashlib.sha256(source.read_bytes()).hexdigest()
        for source in sorted(Path(index.build.__file__).parent.glob("*.py"))
    )
    parts += [
        config.embedding.model,
        config.embedding.backend,
        config.embedding.device,  # backend auto: onnx on a CPU, torch on CUDA
        str(config.embedding.max_seq_length),
        config.index.type,
        str(config.index.descriptions),
        repr(config.catalog),
    ]
    if config.embedding.backend == "static":  # which distilled model (other backends keep their old keys)
        parts += [str(config.embedding.static_dir), str(config.embedding.static_pca_dims)]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def prepare_index(
    config: Config,
    data: Sequence[str | Path] | None,
    *,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    echo: Callable[[str], None] = print,
) -> Config:
    """A copy of `config` whose `index.path` holds an index of `data` (built on first use, then reused).

    Without `data` the configured index is used as it is. The index lives in
    `<cache_dir>/<key>/`, `key` a hash of the catalog bytes and of the embedding, index and
    cleaning settings, so a changed catalog or setting never reuses a stale index.
    """
    config = copy.deepcopy(config)
    if not data:
        return config
    paths = [Path(p) for p in data]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: catalog file given with --data not found")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    config.index.path = str(root / index_key(config, paths))
    from index.build import build_index
    from index.store import IndexStore

    store = IndexStore(config.index.path)
    if rebuild or not store.has_current():
        echo(f"building an evaluation index of {', '.join(map(str, paths))} in {config.index.path} ...")
        started = time.perf_counter()
        report = build_index(config, paths, progress=False)
        summary = report.summary() if hasattr(report, "summary") else str(report)
        echo(f"built in {time.perf_counter() - started:.1f} s: {summary}")
    return config


# --------------------------------------------------------------------------- resolving questions


@dataclass
class ResolvedQuestion:
    """A question with its text filled in and its expected row looked up in the index."""

    source: EvalQuestion
    text: str
    expected_uid: str | None
    expected_title: str | None  # cleaned, case-folded (title-only questions)
    gold: CatalogRow | None  # the expected row when the index holds it (for ROUGE-L)

    @property
    def qid(self) -> str:
        return self.source.qid

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def has_expected(self) -> bool:
        """False for questions that name no product (kind "absent")."""
        return self.expected_uid is not None or self.expected_title is not None

    def matches(self, uid: str, title: str) -> bool:
        if self.expected_uid is not None:
            return uid == self.expected_uid
        return self.expected_title is not None and clean_title(title).casefold() == self.expected_title


def _rows_by_line(snapshot: Any) -> dict[int, CatalogRow]:
    """line -> row, for indexes built from one catalog file (the `line` fallback of question files)."""
    rows: dict[int, CatalogRow] = {}
    sources: set[str | None] = set()
    for row in snapshot.iter_rows():
        sources.add(row.source)
        if row.line is not None:
            rows[row.line] = row
    return rows if len(sources) == 1 else {}


def resolve_questions(
    questions: Sequence[EvalQuestion], snapshot: Any, warn: Callable[[str], None] = log.warning
) -> list[ResolvedQuestion]:
    """Look every expected product up in the index snapshot and fill `{title...}` placeholders.

    A uid missing from the index falls back to the question's `line` (with a warning: the content
    hash changed, most likely because the cleaning rules did). A placeholder question whose product
    is not found cannot be asked and raises QuestionFileError naming its file and line.
    """
    by_line: dict[int, CatalogRow] | None = None
    resolved: list[ResolvedQuestion] = []
    stale = 0
    for q in questions:
        gold = snapshot.get_by_uid(q.uid) if q.uid else None
        expected_uid = q.uid
        if q.uid and gold is None and q.line is not None:
            if by_line is None:
                by_line = _rows_by_line(snapshot)
            gold = by_line.get(q.line)
            if gold is not None:
                expected_uid = gold.uid
                stale += 1
        if gold is None and q.uid is None and q.title:
            gold = None  # title-only: matched by title at search time; no gold text needed
        text = q.question
        if q.has_placeholder:
            if gold is None:
                raise QuestionFileError(
                    f"{q.where or q.qid}: uid {q.uid!r} is not in the index, so its {{title}} placeholder "
                    "cannot be filled; check --data (the catalog the questions were written for)"
                )
            text = render_question(q.question, gold.title)
        expected_title = clean_title(q.title).casefold() if (q.title and not q.uid) else None
        resolved.append(ResolvedQuestion(q, text, expected_uid, expected_title, gold))
    if stale:
        warn(
            f"{stale} question(s) found their product by 'line' because the uid was not in the index "
            "(the cleaning rules changed the content hash): regenerate the question file's uids"
        )
    missing = [r.qid for r in resolved if r.expected_uid and r.gold is None]
    if missing:
        warn(
            f"{len(missing)} expected uid(s) are not in the index (first: {missing[0]}); they count as not found"
        )
    return resolved


# --------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalRecord:
    qid: str
    kind: str
    question: str
    rank: int | None
    seconds: float
    top: list[str] = field(default_factory=list)  # top-3 titles, for reading failures


def _rank(item: ResolvedQuestion, hits: Sequence[Hit]) -> int | None:
    for position, hit in enumerate(hits, start=1):
        if item.matches(hit.row.uid, hit.row.title):
            return position
    return None


def evaluate_retrieval(
    retriever: Any,
    items: Sequence[ResolvedQuestion],
    ks: Sequence[int] = RETRIEVAL_KS,
    progress: bool = False,
) -> dict[str, Any]:
    """recall@k and MRR (at depth max(ks)) per kind and overall, plus per-question records.

    Questions that name no product (kind "absent") have no rank to measure and are left out
    (`skipped_no_expected` counts them)."""
    depth = max(ks)
    records: list[RetrievalRecord] = []
    skipped = sum(1 for item in items if not item.has_expected)
    items = [item for item in items if item.has_expected]
    iterator = _progress(items, progress, "retrieval")
    for item in iterator:
        started = time.perf_counter()
        hits = retriever.search(item.text, k=depth)
        seconds = time.perf_counter() - started
        records.append(
            RetrievalRecord(
                item.qid, item.kind, item.text, _rank(item, hits), seconds, [h.row.title for h in hits[:3]]
            )
        )
    return {
        "depth": depth,
        "ks": list(ks),
        "summary": summarise_retrieval(records, ks),
        "skipped_no_expected": skipped,
        "questions": [r.__dict__ for r in records],
    }


def summarise_retrieval(records: Sequence[RetrievalRecord], ks: Sequence[int]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[RetrievalRecord]] = {}
    for r in records:
        groups.setdefault(r.kind, []).append(r)
    out: dict[str, dict[str, float]] = {}
    for name, group in [*sorted(groups.items()), ("overall", list(records))]:
        ranks = [r.rank for r in group]
        row: dict[str, float] = {"n": len(group)}
        for k in ks:
            row[f"recall@{k}"] = recall_at_k(ranks, k)
        row["mrr"] = mrr(ranks)
        row["p50_ms"] = percentile([r.seconds for r in group], 50) * 1000
        row["p95_ms"] = percentile([r.seconds for r in group], 95) * 1000
        out[name] = row
    return out


# --------------------------------------------------------------------------- answers


@dataclass
class AnswerRecord:
    """One scored answer. None means "does not apply" and is left out of the group's rate."""

    qid: str
    kind: str
    question: str
    answer: str
    must_contain: list[str]
    contains: bool | None  # None when no needle is left to check (none listed, or all in the question)
    must_checked: list[str]  # the needles the question does not already contain
    must_skipped: bool  # needles listed, but the question itself holds every one of them
    cites_expected: (
        bool | None
    )  # the answer's own [n] names the expected row; None: nothing to cite / no expected row
    cites_first: bool | None  # the FIRST [n] of the answer is the expected row
    retrieved_expected: bool | None  # the expected row is among answer.sources (retrieval, not the answer)
    rouge_l: float | None  # None without a gold description
    grounded: bool
    abstained: bool  # the answer is a refusal (rag.grounding.is_abstention)
    false_abstention: (
        bool | None
    )  # abstained although the expected row was among the sources; None: it was not
    absent_abstained: bool | None  # kind "absent": abstained or found nothing; None for other questions
    stopped: bool | None  # the generator stopped at its end token (finish_reason != "length"); None: unknown
    finish_reason: str | None
    language: str | None
    seconds: float
    found: bool
    fallback: str | None = (
        None  # generator.grounding_fallback changed the LLM's answer: "trim" / "extractive"
    )


def _expected_positions(item: ResolvedQuestion, answer: Answer) -> list[int]:
    """1-based positions of the expected row among the answer's sources."""
    return [i for i, s in enumerate(answer.sources, start=1) if item.matches(s.uid, s.title)]


def answer_record(
    item: ResolvedQuestion,
    answer: Answer,
    seconds: float,
    *,
    use_context: bool,
    grounding_hits: Sequence[Hit] | None = None,
) -> AnswerRecord:
    """Score one answer.

    * cites_expected / cites_first read the answer's own [n] markers (rag.grounding.cited_numbers):
      a cited number must be the expected row's 1-based position among `answer.sources`;
      retrieved_expected only says that row was among the sources.
    * must_contain checks only the needles the question does not already contain.
    * grounded: no unsupported sentence (rag.grounding, question and title echoes included), the
      answer is not empty, and it is not a refusal while the expected row was among the rows it
      was given (a wrong refusal states something false about the sources).

    Without context the answer cites nothing; its grounding is then checked against
    `grounding_hits` (the rows retrieval gives for the question), so "grounded" keeps one meaning
    across the ablation: every sentence is supported by catalog rows about the question.
    """
    from rag.grounding import cited_numbers, is_abstention, unsupported_sentences

    text = answer.text or ""
    has_expected = item.has_expected
    abstained = is_abstention(text)
    retrieved: bool | None  # None: not measurable for this item or mode
    cites: bool | None
    first: bool | None
    if use_context:
        grounded = answer.grounded
        positions = _expected_positions(item, answer)
        reference_has_expected = bool(positions)
        if has_expected:
            cited = cited_numbers(text)
            retrieved = bool(positions)
            cites = any(n in positions for n in cited)
            first = bool(cited) and cited[0] in positions
        else:
            retrieved = cites = first = None
        false_abstention = abstained if reference_has_expected else None
    else:
        hits = list(grounding_hits or [])
        grounded = not unsupported_sentences(text, hits, question=item.text)
        reference_has_expected = any(item.matches(h.row.uid, h.row.title) for h in hits)
        retrieved = cites = first = None
        false_abstention = None  # the model was given no sources to refuse wrongly
    if not text.strip() or (abstained and reference_has_expected):
        grounded = False
    gold = item.gold.content if item.gold is not None and item.gold.content else None
    must = [m for m in item.source.must_contain if m.strip()]
    checked = needles_to_check(item.text, must)
    finish_reason = getattr(answer, "finish_reason", None)
    stopped = None if finish_reason is None else finish_reason != "length"
    absent = item.source.kind == ABSENT_KIND
    return AnswerRecord(
        qid=item.qid,
        kind=item.kind,
        question=item.text,
        answer=text,
        must_contain=list(must),
        contains=contains_all(text, checked) if checked else None,
        must_checked=checked,
        must_skipped=bool(must) and not checked,
        cites_expected=cites,
        cites_first=first,
        retrieved_expected=retrieved,
        rouge_l=rouge_l(text, gold) if gold else None,
        grounded=grounded,
        abstained=abstained,
        false_abstention=false_abstention,
        absent_abstained=(abstained or not answer.found) if absent else None,
        stopped=stopped,
        finish_reason=finish_reason,
        language=getattr(item.source, "language", None),
        seconds=seconds,
        found=answer.found,
        fallback=getattr(answer, "fallback", None),
    )


def evaluate_answers(
    rag: Any,
    items: Sequence[ResolvedQuestion],
    *,
    use_context: bool = True,
    k: int | None = None,
    progress: bool = False,
    label: str = "answers",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Ask every question through `rag` and score the answers (see `answer_record`).

    A generator that batches (`hf`) answers `batch_size` questions at a time (default
    generator.batch_size) through `rag.answer_many`; a record's `seconds` is then its share of its
    batch's time, so p50_s reads as time per answer. `wall_s` is the whole run."""
    records: list[AnswerRecord] = []
    started_all = time.perf_counter()
    if batch_size is None:
        batch_size = rag.config.generator.batch_size if hasattr(rag, "config") else 1
    size = max(1, int(batch_size))
    batched = (
        size > 1
        and hasattr(getattr(rag, "generator", None), "generate_batch")
        and hasattr(rag, "answer_many")
    )
    chunks = (
        [list(items[i : i + size]) for i in range(0, len(items), size)]
        if batched
        else [[item] for item in items]
    )
    for chunk in _progress(chunks, progress, label):
        started = time.perf_counter()
        if batched:
            answers = rag.answer_many(
                [item.text for item in chunk], k=k, use_context=use_context, batch_size=size
            )
        else:
            answers = [rag.answer(chunk[0].text, k=k, use_context=use_context)]
        seconds = (time.perf_counter() - started) / len(chunk)
        for item, answer in zip(chunk, answers, strict=True):
            hits = None if use_context else rag.retrieve(item.text, k=k)
            records.append(answer_record(item, answer, seconds, use_context=use_context, grounding_hits=hits))
    return {
        "use_context": use_context,
        "batch_size": size if batched else 1,
        "wall_s": time.perf_counter() - started_all,
        "summary": summarise_answers(records),
        "questions": [r.__dict__ for r in records],
    }


def _share(values: Sequence[bool | None]) -> tuple[float, int]:
    known = [v for v in values if v is not None]
    return (sum(known) / len(known) if known else float("nan")), len(known)


def _groups(records: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """Per kind (sorted), then per language ("lang:en", "lang:pt") when questions carry one, then overall."""
    kinds: dict[str, list[Any]] = {}
    languages: dict[str, list[Any]] = {}
    for r in records:
        kinds.setdefault(r.kind, []).append(r)
        if getattr(r, "language", None):
            languages.setdefault(f"lang:{r.language}", []).append(r)
    return sorted(kinds.items()) + sorted(languages.items()) + [("overall", list(records))]


def summarise_answers(records: Sequence[AnswerRecord]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, group in _groups(records):
        contains, n_contains = _share([r.contains for r in group])
        cites, n_cites = _share([r.cites_expected for r in group])
        first, _ = _share([r.cites_first for r in group])
        retrieved, _ = _share([r.retrieved_expected for r in group])
        false_abstention, n_false_base = _share([r.false_abstention for r in group])
        absent, n_absent = _share([r.absent_abstained for r in group])
        stop, n_stop = _share([r.stopped for r in group])
        rouge = [r.rouge_l for r in group if r.rouge_l is not None]
        out[name] = {
            "n": len(group),
            "must_contain": contains,
            "n_must_contain": n_contains,
            "n_must_skipped": sum(r.must_skipped for r in group),
            "cites_expected": cites,
            "cites_first": first,
            "n_cites": n_cites,
            "retrieved_expected": retrieved,
            "rouge_l": mean(rouge),
            "n_rouge": len(rouge),
            "grounded": sum(r.grounded for r in group) / len(group),
            "abstained": sum(r.abstained for r in group) / len(group),
            "false_abstention": false_abstention,
            "n_expected_in_sources": n_false_base,
            "abstention_rate": absent,
            "n_absent": n_absent,
            "stop_rate": stop,
            "n_stop": n_stop,
            "fallback_rate": sum(bool(getattr(r, "fallback", None)) for r in group) / len(group),
            "p50_s": percentile([r.seconds for r in group], 50),
            "p95_s": percentile([r.seconds for r in group], 95),
        }
    return out


# --------------------------------------------------------------------------- ablation


@dataclass
class Variant:
    name: str
    adapter: str | None
    use_context: bool


def ablation_variants(adapter: str | None) -> list[Variant]:
    variants = [Variant("base + context", None, True), Variant("base, no context", None, False)]
    if adapter:
        variants += [
            Variant("fine-tuned + context", adapter, True),
            Variant("fine-tuned, no context", adapter, False),
        ]
    return variants


def run_ablation(
    config: Config,
    retriever: Any,
    items: Sequence[ResolvedQuestion],
    adapter: str | None,
    *,
    k: int | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Base vs fine-tuned generator, each with and without retrieved context, through `RAG`.

    All variants share one retriever (same index, same hits) and differ only in the generator
    (`generator.adapter`) and `use_context`; one generator is loaded per model and reused for its
    two context settings.
    """
    from rag.generators import make_generator
    from rag.pipeline import RAG

    results: dict[str, Any] = {}
    generators: dict[str | None, Any] = {}
    for variant in ablation_variants(adapter):
        if variant.adapter not in generators:
            variant_config = copy.deepcopy(config)
            variant_config.generator.adapter = variant.adapter
            generators[variant.adapter] = (variant_config, make_generator(variant_config))
        variant_config, generator = generators[variant.adapter]
        rag = RAG(variant_config, retriever, generator)
        echo(f"ablation: {variant.name} ({len(items)} questions)")
        results[variant.name] = evaluate_answers(
            rag, items, use_context=variant.use_context, k=k, progress=progress, label=variant.name
        )
    return results


# --------------------------------------------------------------------------- tables and environment


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def retrieval_table(summary: dict[str, dict[str, float]], ks: Sequence[int] = RETRIEVAL_KS) -> str:
    head = ["kind", "n"] + [f"recall@{k}" for k in ks] + ["MRR", "p50 ms", "p95 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, row in summary.items():
        cells = [f"**{name}**" if name == "overall" else name, str(int(row["n"]))]
        cells += [_fmt(row[f"recall@{k}"]) for k in ks]
        cells += [_fmt(row["mrr"]), _fmt(row["p50_ms"], 1), _fmt(row["p95_ms"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


ANSWER_COLUMNS = [
    "n",
    "must_contain (n, skipped)",
    "cites expected",
    "cites expected [1]",
    "retrieved expected",
    "ROUGE-L",
    "grounded",
    "abstained",
    "false abstention",
    "absent: abstains",
    "stop rate",
    "p50 s",
    "p95 s",
]


def answers_table(rows: dict[str, dict[str, float]], first_column: str = "kind") -> str:
    """Markdown table of answer summaries (older result files without the newer keys show n/a)."""
    head = [first_column, *ANSWER_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]

    def counted(row: dict[str, Any], key: str, n_key: str) -> str:
        return f"{_fmt(row.get(key))} ({int(row[n_key])})" if row.get(n_key) else "n/a"

    for name, row in rows.items():
        skipped = int(row.get("n_must_skipped") or 0)
        if row.get("n_must_contain"):
            must = f"{_fmt(row['must_contain'])} ({int(row['n_must_contain'])}, {skipped} skipped)"
        else:
            must = f"n/a (0, {skipped} skipped)" if skipped else "n/a"
        cells = [
            f"**{name}**" if name == "overall" else name,
            str(int(row["n"])),
            must,
            _fmt(row.get("cites_expected")),
            _fmt(row.get("cites_first")),
            _fmt(row.get("retrieved_expected")),
            counted(row, "rouge_l", "n_rouge"),
            _fmt(row.get("grounded")),
            _fmt(row.get("abstained")),
            counted(row, "false_abstention", "n_expected_in_sources"),
            counted(row, "abstention_rate", "n_absent"),
            counted(row, "stop_rate", "n_stop"),
            _fmt(row.get("p50_s"), 3),
            _fmt(row.get("p95_s"), 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Machine and library versions, printed with every figure."""
    import os

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }
    try:
        info["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        info["ram_gib"] = None
    # versions from the installed distributions: importing torch just to print its version costs seconds
    from importlib import metadata

    for name, dists in (
        ("torch", ("torch",)),
        ("faiss", ("faiss-cpu", "faiss-gpu", "faiss")),
        ("transformers", ("transformers",)),
        ("sentence_transformers", ("sentence-transformers",)),
    ):
        info[name] = None
        for dist in dists:
            try:
                info[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    try:  # other work on the machine skews every timing: record how busy it was
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not available on this platform
        info["load_average"] = None
    info["cuda"] = None
    if "torch" in sys.modules:  # only ask CUDA when torch is loaded anyway (a GPU run)
        try:
            torch = sys.modules["torch"]
            info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception:  # noqa: BLE001 - a broken CUDA setup is reported as no GPU
            info["cuda"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_line(info: dict[str, Any]) -> str:
    parts = [
        f"CPU {info.get('cpu')} ({info.get('cores')} cores)",
        f"RAM {info.get('ram_gib')} GiB",
        f"python {info.get('python')}",
        f"torch {info.get('torch')}",
        f"faiss {info.get('faiss')}",
    ]
    if info.get("load_average"):
        parts.append(f"load average {info['load_average'][0]}")
    if info.get("cuda"):
        parts.append(f"GPU {info['cuda']}")
    return "machine: " + ", ".join(parts)


def _progress(items: Sequence[Any], enabled: bool, label: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=label, unit="q")
