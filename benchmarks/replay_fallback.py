"""Replay an LLM's recorded answers through the pipeline, to measure `generator.grounding_fallback`
settings without the model (or its GPU).

The answers come from an evaluation run with `--records` (for example `RECORDS=1 bash
benchmarks/gpu_real.sh` on the GPU machine: `cuda_ft_heldout.json`, fallback off). Each question is
then asked again through `rag eval answers` with the same arguments, retrieval and grounding check
running for real, but the generator hands back the recorded text for that question instead of
generating. So the fallback sees exactly what the model wrote.

    python benchmarks/replay_fallback.py RECORDS.json --config configs/smollm2-chat.yaml \\
        --data data/trn_sample.jsonl --questions eval/fact_questions.jsonl --split heldout \\
        --set generator.grounding_fallback=extractive --set generator.fallback_min_agreement=0.5

Everything after RECORDS.json is passed to `rag eval answers`. Retrieval here uses this machine's
embedding backend, which may rank a few rows differently from the recording run; a question the
recording lacks is an error. The records hold catalog text: keep them out of the repository.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ReplayGenerator:
    """A generator that answers each question with the text recorded for it."""

    name = "replay"

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers

    def _recorded(self, request: Any) -> str:
        record = self.answers.get(request.question)
        if record is None:
            raise SystemExit(f"replay: no recorded answer for the question {request.question!r}")
        request.finish_reason = record.get("finish_reason") or "stop"
        return str(record.get("answer") or "")

    def generate(self, request: Any) -> str:
        return self._recorded(request)

    def stream(self, request: Any) -> Iterator[str]:
        yield self._recorded(request)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    records = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    answers = {q["question"]: q for q in records.get("questions") or [] if "answer" in q}
    if not answers:
        print(f"replay: {argv[0]} holds no answers (run the evaluation with --records)", file=sys.stderr)
        return 2
    from rag.cli import main as rag_main
    from rag.pipeline import RAG

    def replaying(config: Any, *, generator: Any = None, retriever: Any = None) -> RAG:
        from rag.retrieval import Retriever

        return RAG(config, retriever or Retriever.from_config(config), ReplayGenerator(answers))

    RAG.from_config = replaying  # type: ignore[assignment,method-assign]
    return int(rag_main(["eval", "answers", *argv[1:]]) or 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
