"""Evaluation in numbers: retrieval recall/MRR, answer quality, ablations, question generation.

    rag eval questions --data catalog.jsonl --out questions.jsonl --n 500
    rag eval retrieval --questions eval/sample_questions.jsonl --data ../shared/data/amazontitles/trn_sample.jsonl
    rag eval answers   --questions eval/sample_questions.jsonl --data ../shared/data/amazontitles/trn_sample.jsonl
    rag eval ablation  --questions q.jsonl --data catalog.jsonl --set generator.backend=hf --set generator.model=DIR --adapter ADAPTER

Modules: `questions` (question files and the generator), `metrics` (recall@k, MRR, ROUGE-L,
must_contain), `runner` (runs the pipeline over a question file), `cli` (`rag eval ...`).
Nothing here imports torch or faiss at import time.
"""

from __future__ import annotations

from rag.evaluation.metrics import contains_all, mrr, percentile, recall_at_k, rouge_l
from rag.evaluation.questions import EvalQuestion, generate_questions, load_questions, write_questions

__all__ = [
    "EvalQuestion",
    "contains_all",
    "generate_questions",
    "load_questions",
    "mrr",
    "percentile",
    "recall_at_k",
    "rouge_l",
    "write_questions",
]
