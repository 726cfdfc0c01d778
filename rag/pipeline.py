"""Retrieve, build the prompt, generate, check grounding: `RAG.answer`.

    from rag.pipeline import RAG
    rag = RAG.from_config(load_config("configs/default.yaml"))
    answer = rag.answer("who wrote City of Djinns?")
    for piece in rag.answer("what is it about?", history=[...], stream=True): print(piece, end="")

Each answer takes one index snapshot at its start, so a hot reload between requests never mixes
two versions inside one answer.

Every text an Answer carries (text, sources' titles and snippets, unsupported sentences, llm_text)
is plain text: `rag.safety.OutputGuard` removes markup, link targets, script URLs and special-token
look-alikes, and cuts any run of the system prompt that the sources do not hold (the canary), also
from a stream as it goes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from rag.config import Config
from rag.grounding import unsupported_sentences
from rag.prompt import build_messages, clip_text
from rag.safety import OutputGuard, plain_text
from rag.types import Answer, GenerationRequest, Generator, Hit, Source

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+

MAX_QUESTION_CHARS = 4000

# The answer to a follow-up ("who wrote it?") when no product is under discussion.
WHICH_PRODUCT_ANSWER = (
    'Which product do you mean? Nothing has been discussed yet, so I can\'t tell what "it" refers to: '
    'name the product, e.g. "who wrote City of Djinns?".'
)


def _refers_back_to_nothing(parsed: Any) -> bool:
    """A follow-up (its words name no product) for which the history held no product either."""
    return bool(getattr(parsed, "followup", False)) and not getattr(parsed, "title_query", "")


class AnswerStream:
    """Iterator of text pieces; `.answer` holds the final Answer once the iterator is exhausted."""

    def __init__(self, pieces: Iterator[str], finish: Any) -> None:
        self._pieces = pieces
        self._finish = finish
        self._parts: list[str] = []
        self.answer: Answer | None = None

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            if self.answer is None:
                self.answer = self._finish("".join(self._parts))
            raise
        self._parts.append(piece)
        return piece

    def collect(self) -> Answer:
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer

    def stop(self, text: str | None = None) -> Answer:
        """End the stream now (a stop sequence was seen): close the generator and finish the Answer
        with `text` (default: the pieces so far), finish_reason "stop"."""
        if self.answer is None:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()  # a generator's finally (an LLM backend's clean-up) runs now
            self.answer = self._finish("".join(self._parts) if text is None else text)
            self.answer.finish_reason = "stop"
        return self.answer


class RAG:
    """The question-answering pipeline: a Retriever and a Generator under one Config."""

    def __init__(self, config: Config, retriever: Any, generator: Generator) -> None:
        # checked here, when the pipeline is built, rather than at the first question
        if not isinstance(config, Config):
            raise TypeError(f"RAG: config must be a rag.Config, got {type(config).__name__}")
        for attr in ("search", "snapshot"):
            if not hasattr(retriever, attr):
                raise TypeError(
                    f"RAG: retriever {type(retriever).__name__} has no {attr!r} (use rag.retrieval.Retriever)"
                )
        for attr in ("name", "generate", "stream"):
            if not hasattr(generator, attr):
                raise TypeError(
                    f"RAG: generator {type(generator).__name__} has no {attr!r} (see rag.types.Generator)"
                )
        self.config = config
        self.retriever = retriever
        self.generator = generator
        self.closed = False

    def close(self) -> None:
        """Release the generator (its HTTP client or model) and the index's open files. Idempotent;
        the pipeline cannot answer afterwards (rag.close() drops the ones rag.answer() cached)."""
        if self.closed:
            return
        self.closed = True
        close = getattr(self.generator, "close", None)
        if callable(close):
            close()
        live = getattr(self.retriever, "live_index", None)
        snapshot = getattr(live, "_snapshot", None)
        if snapshot is not None and callable(getattr(snapshot, "close", None)):
            snapshot.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_config(cls, config: Config, *, generator: Generator | None = None, retriever: Any = None) -> RAG:
        from rag.generators import make_generator
        from rag.retrieval import Retriever

        retriever = retriever or Retriever.from_config(config)
        generator = generator or make_generator(config)
        return cls(config, retriever, generator)

    # ------------------------------------------------------------------ steps

    def retrieve(
        self,
        question: str,
        k: int | None = None,
        history: Sequence[dict[str, str]] = (),
        snapshot: Any = None,
    ) -> list[Hit]:
        return self.retriever.search(question, k=k, history=history, snapshot=snapshot)

    def _check_question(self, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise ValueError(
                "question is empty: ask something about a product, e.g. 'who wrote City of Djinns?'"
            )
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
        return question.strip()

    def _sources(self, hits: list[Hit]) -> list[Source]:
        # plain text even from an index built before cleaning removed markup
        return [
            Source(
                uid=h.row.uid,
                title=plain_text(h.row.title).strip(),
                score=h.score,
                snippet=plain_text(h.snippet or clip_text(h.row.content, 240)).strip(),
            )
            for h in hits
        ]

    def _guard(self, request: GenerationRequest) -> OutputGuard:
        """The output guard of one answer: the system prompt is the canary; what the model was given
        as sources (and the question) may be quoted."""
        exempt = [request.question] + [f"{h.row.title} {h.row.content}" for h in request.hits]
        return OutputGuard(self.config.prompt.system, exempt)

    def prepare(
        self,
        question: str,
        *,
        k: int | None = None,
        history: Sequence[dict[str, str]] | None = None,
        use_context: bool = True,
        snapshot: Any = None,
    ) -> tuple[GenerationRequest, dict[str, float], bool]:
        """Retrieve and build the generation request (exposed for the API and `rag compare`).

        `snapshot` pins the index version (the API passes the one whose version it reports)."""
        if self.closed:
            raise RuntimeError("this RAG pipeline was closed (RAG.close / rag.close); build a new one")
        question = self._check_question(question)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a whole number >= 1, got {k!r}")
        history = list(history or [])
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        snapshot = snapshot or self.retriever.snapshot
        hits: list[Hit] = []
        parse = getattr(self.retriever, "parse", None)
        # "what is it about?" with no product in the conversation: searching its words would only
        # find an unrelated row, so the answer asks which product is meant instead
        needs_product = bool(
            use_context and callable(parse) and _refers_back_to_nothing(parse(question, history))
        )
        if use_context and not needs_product:
            if hasattr(self.retriever, "search_with_timings"):
                hits, stages = self.retriever.search_with_timings(question, k, history, snapshot)
            else:
                hits, stages = self.retrieve(question, k=k, history=history, snapshot=snapshot), {}
            timings.update({f"retrieve.{name}": seconds for name, seconds in stages.items()})
        timings["retrieve"] = time.perf_counter() - t0
        min_score = self.config.retrieval.min_score
        found = bool(hits) and hits[0].score >= min_score and self._names_product(question, hits)
        if self.generator.name == "extractive":
            prompt_hits = hits  # it applies min_score itself and names close matches
        else:
            # an LLM reads every source it is given as relevant: rows below min_score stay out
            prompt_hits = [h for h in hits if h.score >= min_score] if found else []
        messages = build_messages(question, prompt_hits, self.config.prompt, history=history)
        request = GenerationRequest(
            question=question,
            hits=prompt_hits,
            messages=messages,
            history=history,
            needs_product=needs_product,
        )
        return request, timings, found

    def _checked_stream(
        self, pieces: Iterator[str], request: GenerationRequest, found: bool
    ) -> Iterator[str]:
        """The LLM's whole answer, checked, as one piece: a fallback cannot take back streamed text."""
        text = "".join(pieces).strip()
        yield self._grounded_text(request, text, found)

    def _names_product(self, question: str, hits: list[Hit]) -> bool:
        """False when the question names a product whose name the top rows do not contain."""
        threshold = self.config.retrieval.min_name_coverage
        if threshold <= 0:
            return True
        from rag.query import named_product_coverage

        coverage = named_product_coverage(question, [f"{h.row.title} {h.row.content}" for h in hits[:3]])
        return coverage is None or coverage >= threshold

    def _finish(
        self,
        request: GenerationRequest,
        text: str,
        timings: dict[str, float],
        found: bool,
        started: float,
        generate_started: float,
    ) -> Answer:
        timings["generate"] = time.perf_counter() - generate_started
        guard = self._guard(request)
        text = guard.clean(text).strip()
        if request.finish_reason is None and self.generator.name == "extractive":
            request.finish_reason = "stop"  # a fixed-form answer always ends on its own
        t0 = time.perf_counter()
        unsupported = unsupported_sentences(text, request.hits, question=request.question) if found else []
        if request.fallback is None:
            checked = self._grounded_text(request, text, found, unsupported)
            if checked != text:
                text = guard.clean(checked).strip()
                unsupported = unsupported_sentences(text, request.hits, question=request.question)
        timings["grounding"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        return Answer(
            question=request.question,
            text=text,
            sources=self._sources(request.hits) if found else [],
            timings=timings,
            found=found,
            unsupported_sentences=unsupported,
            generator=self.generator.name,
            finish_reason=request.finish_reason,
            new_tokens=request.new_tokens,
            fallback=request.fallback or None,
            llm_text=guard.clean(request.llm_text) if request.llm_text is not None else None,
            prompt_messages=request.messages,
        )

    def _grounded_text(
        self, request: GenerationRequest, text: str, found: bool, flagged: list[str] | None = None
    ) -> str:
        """generator.grounding_fallback applied to an LLM's answer (unchanged when it passes the check).

        `flagged`: the answer's unsupported sentences when the caller has them already. Sets
        request.fallback ("" when nothing was changed) and request.llm_text."""
        mode = self.config.generator.grounding_fallback
        request.fallback = ""
        if mode == "none" or self.generator.name == "extractive" or not found or not request.hits:
            return text
        from rag.grounding import is_abstention, missing_answer_type, split_answer

        if flagged is None:
            flagged = unsupported_sentences(text, request.hits, question=request.question)
        # an answer with no number to "how many", or no year to "when", misses what was asked
        refused = not text or is_abstention(text) or missing_answer_type(request.question, text) is not None
        sentences = split_answer(text, [h.row.title for h in request.hits])
        repeated = len(set(sentences)) < len(sentences)  # a looping model repeats sentences
        from rag.generators.extractive import ExtractiveGenerator, cut_to_tokens

        extractive = ExtractiveGenerator(self.config)
        reader: str | None = None  # the extractive answer, composed once when the agreement needs it
        disagrees = False
        min_agreement = self.config.generator.fallback_min_agreement
        if min_agreement > 0 and not flagged and not refused:
            from rag.grounding import agreement

            reader = extractive.reader_answer(request)
            disagrees = agreement(text, reader, request.question) < min_agreement
        if not flagged and not refused and not disagrees and not (mode == "trim" and repeated):
            return text
        new_text = ""
        if mode == "trim" and not refused and not disagrees:
            bad = set(flagged)
            kept = [x for x in dict.fromkeys(sentences) if x not in bad]
            new_text = " ".join(kept).strip()
            request.fallback = "trim" if new_text else ""
        if not new_text:
            new_text = extractive.generate(request) if reader is None else cut_to_tokens(request, reader)
            request.fallback = "extractive"
        request.llm_text = text
        return new_text

    def _not_found_text(self, request: GenerationRequest) -> str:
        """The fixed answer for nothing found (sets finish_reason); the extractive answerer cuts it
        at max_new_tokens like its own answers."""
        from rag.generators.extractive import NOT_FOUND_ANSWER, cut_to_tokens

        request.finish_reason, request.new_tokens = "stop", 0
        text = WHICH_PRODUCT_ANSWER if request.needs_product else NOT_FOUND_ANSWER
        if self.generator.name == "extractive":
            return cut_to_tokens(request, text)
        return text

    def _not_found(
        self, request: GenerationRequest, timings: dict[str, float], found: bool, started: float
    ) -> Answer:
        """Nothing relevant was retrieved: an LLM could only invent an answer, so no generator is asked."""
        text = self._not_found_text(request)
        return self._finish(request, text, timings, found, started, time.perf_counter())

    def answer_many(
        self,
        questions: Sequence[str],
        *,
        k: int | None = None,
        use_context: bool = True,
        batch_size: int | None = None,
    ) -> list[Answer]:
        """Answer many questions, generating them together where the generator batches (`hf`:
        generator.batch_size, left-padded, sorted by prompt length); otherwise one at a time. Each
        Answer is what `answer()` gives for its question; its timings["generate"] is its batch's time."""
        started = time.perf_counter()
        prepared = [self.prepare(q, k=k, use_context=use_context) for q in questions]
        answers: list[Answer | None] = [None] * len(questions)
        pending = []
        for i, (request, timings, found) in enumerate(prepared):
            if use_context and not found:
                answers[i] = self._not_found(request, timings, found, started)
            else:
                pending.append(i)
        batch = getattr(self.generator, "generate_batch", None)
        size = max(1, int(batch_size or self.config.generator.batch_size))
        for start in range(0, len(pending), size if batch else 1):
            chunk = pending[start : start + (size if batch else 1)]
            generate_started = time.perf_counter()
            requests = [prepared[i][0] for i in chunk]
            texts = batch(requests, batch_size=size) if batch else [self.generator.generate(requests[0])]
            for i, text in zip(chunk, texts, strict=True):
                request, timings, found = prepared[i]
                answers[i] = self._finish(request, text, timings, found, started, generate_started)
        return [a for a in answers if a is not None]

    @overload
    def answer(
        self,
        question: str,
        *,
        k: int | None = ...,
        history: Sequence[dict[str, str]] | None = ...,
        stream: Literal[False] = ...,
        use_context: bool = ...,
        max_new_tokens: int | None = ...,
        temperature: float | None = ...,
        top_p: float | None = ...,
        snapshot: Any = ...,
    ) -> Answer: ...

    @overload
    def answer(
        self,
        question: str,
        *,
        k: int | None = ...,
        history: Sequence[dict[str, str]] | None = ...,
        stream: Literal[True],
        use_context: bool = ...,
        max_new_tokens: int | None = ...,
        temperature: float | None = ...,
        top_p: float | None = ...,
        snapshot: Any = ...,
    ) -> AnswerStream: ...

    @overload
    def answer(
        self,
        question: str,
        *,
        k: int | None = ...,
        history: Sequence[dict[str, str]] | None = ...,
        stream: bool,
        use_context: bool = ...,
        max_new_tokens: int | None = ...,
        temperature: float | None = ...,
        top_p: float | None = ...,
        snapshot: Any = ...,
    ) -> Answer | AnswerStream: ...

    def answer(
        self,
        question: str,
        *,
        k: int | None = None,
        history: Sequence[dict[str, str]] | None = None,
        stream: bool = False,
        use_context: bool = True,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        snapshot: Any = None,
    ) -> Answer | AnswerStream:
        """Answer `question`; with stream=True return an AnswerStream of text pieces."""
        started = time.perf_counter()
        request, timings, found = self.prepare(
            question, k=k, history=history, use_context=use_context, snapshot=snapshot
        )
        request.max_new_tokens, request.temperature, request.top_p = max_new_tokens, temperature, top_p
        generate_started = time.perf_counter()
        if use_context and not found:
            if stream:
                return AnswerStream(
                    iter([self._not_found_text(request)]),
                    lambda text: self._finish(request, text, timings, found, started, generate_started),
                )
            return self._not_found(request, timings, found, started)
        if stream:
            pieces: Iterator[str] = iter(self.generator.stream(request))
            if self.config.generator.grounding_fallback != "none" and self.generator.name != "extractive":
                pieces = self._checked_stream(pieces, request, found)
            pieces = self._guard(request).stream(pieces)
            return AnswerStream(
                pieces,
                lambda text: self._finish(request, text, timings, found, started, generate_started),
            )
        text = self.generator.generate(request)
        return self._finish(request, text, timings, found, started, generate_started)
