"""Typed configuration: YAML files in `configs/`, dotted overrides, every error reported at once.

    rag ask "who wrote City of Djinns?" --config configs/default.yaml --set retrieval.k=8

Each section is a dataclass; `load_config` merges the YAML file and the `--set` overrides onto the
defaults and validates the result. Unknown keys and wrong types are collected and raised together
in one `ConfigError`, each naming the file and the dotted key at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

DEFAULT_BOILERPLATE = [
    # Removal patterns for publisher notices in descriptions (rag/cleaning.py). They run on text whose
    # HTML entities are already decoded (so "&copy;" is "©"), in this order, each match replaced by a
    # space. Every one is anchored on a phrase that only notices use ("This text refers to",
    # "Copyright ... Reed Business Information", ...), so a sentence that merely says "edition" or
    # "copyright" survives. Families seen in ../shared/data/amazontitles/trn_sample.jsonl:
    #
    # 1. "--This text refers to an out of print or unavailable edition of this title." and the
    #    format variants whose spaces were lost: "--This text refers to thePaperbackedition.",
    #    "...to an alternateHardcoveredition.", "...to thePrint on Demand (Paperback)edition.",
    #    "...to theAudio Cassetteedition.", "...to an alternatekindle_editionedition." The
    #    `(?![A-Za-z_])` makes "kindle_editionedition" match whole.
    (
        r"(?:-{1,2}|[\u2013\u2014]|^)[ \t]*This\s*text\s*refers\s*to\s*(?:an?|the)?[^.\n]{0,80}?[Ee]dition(?![A-Za-z_])"
        r"(?:\s*of\s*this\s*title)?\s*\.?"
    ),
    # 2. Review-journal notices: "Copyright 1999 Reed Business Information, Inc.", "Copyright 2001
    #    Cahners Business Information, Inc.", "(c)Copyright © Reed Business Information, a division
    #    of Reed Elsevier Inc. All rights reserved.", "Copyright © American Library Association.
    #    All rights reserved" (no full stop before "--This text..."), and Kirkus notices.
    (
        r"(?:\(c\)\s*)?Copyright\s*(?:©|\([cC]\))?\s*(?:\d{4}\s*,?\s*)?(?:©\s*)?"
        r"(?:(?:Reed|Cahners)\s*Business\s*Information(?:\s*,?\s*(?:Inc\b\.?|a\s*division\s*of\s*Reed\s*Elsevier"
        r"(?:\s*Inc\b\.?)?))?"
        r"|American\s*Library\s*Association|Kirkus\s*(?:Associates|Reviews|Media)(?:\s*,?\s*(?:LP|LLC|L\.P\.))?)"
        r"\.?(?:\s*All\s*rights\s*reserved\.?)?"
    ),
    # 3. AudioFile reviews end "(c)AudioFile, Portland, Maine" or "(c) AudioFile 2002, Portland, Maine".
    (
        r"(?:\(c\)|©|Copyright)(?:\s*(?:\(c\)|©|Copyright))*\s*(?:\d{4}\s*,?\s*)?AudioFile(?:\s*\d{4})?\s*,?"
        r"\s*Portland\s*,?\s*Maine\.?"
    ),
    # 4. Review labels at the start of a review: "Starred Review." and "[Signature]Reviewed byJess
    #    Walter" (the reviewer's name fused to the first word: the name, up to four capitalised words,
    #    goes with the label only when the next word starts right after it without a space).
    r"\bStarred\s*Review\.\s*",
    r"\[Signature\]\s*Reviewed\s*by\s*(?:[A-Z][a-z.'\u2019-]*\s+){0,3}[A-Z][a-z.'\u2019-]*(?=[A-Z][a-z])",
    r"\[Signature\](?:\s*Reviewed\s*by\b)?",
]


class ConfigError(ValueError):
    """Raised with every problem found in a configuration, one per line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.errors))


@dataclass
class CatalogConfig:
    """How catalog files are read and cleaned (rag/catalog.py)."""

    boilerplate_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_BOILERPLATE))
    keep_empty_content: bool = True  # rows without content stay searchable by title
    # keep_first: later rows with a seen uid are dropped and counted as duplicates (streaming);
    # keep_last: the last row of each uid wins (two passes over the files);
    # reject: later rows with a seen uid are rejected (counted in `rejected`, not `duplicates`).
    duplicate_policy: Literal["keep_first", "keep_last", "reject"] = "keep_first"
    min_title_chars: int = 1
    # The real maxima are 1,999 (title) and 197,622 (content) characters, so the defaults cut nothing there.
    max_title_chars: int = 2000
    max_content_chars: int = 200_000
    overlong: Literal["truncate", "reject"] = "truncate"  # what to do with a title/content over its maximum
    rejects_path: str | None = None  # wins over the path the caller passes (e.g. <index dir>/rejects.jsonl)
    # an index build or update whose rejected lines exceed this share of the lines read fails and writes nothing
    max_reject_fraction: float = 0.5
    # a longer line (or JSON array element) is rejected without being read into memory; the longest real
    # row is ~0.4 MB of JSON (~1.2 MB if every character were \u-escaped), so 4 MiB cuts none of them
    max_line_bytes: int = 4 << 20
    # processes that parse and clean JSON-lines input (rag/catalog.py, `_CleaningPool`); the output is the
    # same with any number. -1: half the cores, at most 8, for inputs of 64 MiB or more (else none); 0: none
    read_workers: int = -1


@dataclass
class EmbeddingConfig:
    """Which sentence-transformers model embeds titles and questions (index/embedder.py)."""

    # "bundled:all-MiniLM-L6-v2" (shipped, offline), a local model directory, a hub id, or
    # "hashing:<dim>" (model-free n-gram hashing for tests/benchmarks of index mechanics only)
    model: str = "bundled:all-MiniLM-L6-v2"
    # "auto": onnx (int8, onnx_quantize) on a CPU, torch on CUDA; torch where onnxruntime is not installed.
    # On the sample questions int8 retrieval equals torch fp32 (docs/performance.md, "onnx int8 as the default")
    backend: Literal["auto", "torch", "onnx", "openvino", "static"] = "auto"
    device: str = "cpu"  # "cpu", "cuda", or "auto"
    batch_size: int = 256
    max_seq_length: int = 64  # titles are short; 64 word pieces cover > 99% of them
    trust_remote_code: bool = False
    cache_size: int = 1024  # query-embedding LRU cache entries (0 disables)
    # backend "onnx" (index/onnx_embedder.py): the model is exported once from its local weights to ONNX,
    # fused by ONNX Runtime's transformer optimizer and, with "int8", dynamically quantised (per-channel
    # int8 weights): ~1.7x the titles/s of torch on 2 AVX2 cores, cosine to torch ~0.99 (docs/performance.md)
    onnx_quantize: Literal["int8", "none"] = "int8"
    # where exported models are cached; null: ~/.cache/amazontitles-rag/onnx/<key> (key: weights + settings)
    onnx_cache_dir: str | None = None
    # intra-op threads of the onnx session and of torch; null: the library's default (all cores)
    num_threads: int | None = None
    # backend torch: "auto" embeds builds and updates through index/bulk_embedder.py on CUDA (Rust tokenizer
    # in bulk, length-sorted fp16 batches, SDPA); true also on CPU (fp32); false always SentenceTransformer.encode
    bulk: bool | Literal["auto"] = "auto"
    bulk_batch_tokens: int = 262144  # padded word pieces per bulk forward pass, at most (4,096 titles of 64)
    # attention kernel of the bulk path: eager measured fastest for short padded titles (docs/performance-gpu.md)
    bulk_attention: Literal["eager", "sdpa"] = "eager"
    tokenizer_threads: int | None = (
        None  # Rayon threads of the bulk tokenizer; null: half the cores, at most 8
    )
    # bulk path: processes that tokenise and pad chunks of titles (one Rayon thread each) in place of
    # the tokenizer thread; null: on CUDA half the cores less two (at most 6), on a CPU 0 (the thread)
    tokenizer_processes: int | None = None
    # backend "static" (index/static_embedder.py): word-piece vectors distilled once from `model` by model2vec
    # (`rag index distill-static`), no transformer at run time: ~380x the titles/s of torch; as served
    # (with the description index) recall within 1 point, title index alone much weaker on described
    # questions (docs/performance.md). The model2vec directory; null: the one distill-static writes
    # under ~/.cache/amazontitles-rag/static/
    static_dir: str | None = None
    static_pca_dims: int = 256  # dimensions the distilled vectors are reduced to by PCA; 0 keeps the model's


@dataclass
class IndexConfig:
    """Where and how the FAISS index and its metadata live (index/)."""

    path: str = "data/index"
    # "auto": exact (flat) below auto_ivf_min_rows rows, else ivf with nlist from the row count and nprobe
    # tuned at build time to reach auto_recall_target (index/autoindex.py, docs/index.md); or a fixed type
    type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    auto_ivf_min_rows: int = 20_000
    # recall@10 against exact search, on held-back titles as queries (its 95% lower bound). One point above
    # the 0.97 goal: at 1.3M rows other questions measured 1-2.5 points below the tuning queries at the
    # same nprobe (docs/performance.md), and the extra lists cost ~0.1 ms a query
    auto_recall_target: float = 0.98
    auto_tune_queries: int = 300
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int = 1024
    # lists probed per query; null: the index's own value (tuned by `auto`, 16 for a hand-set ivf index).
    # Applied when a version is opened, so it overrides the tuned value without a rebuild.
    ivf_nprobe: int | None = None
    ivf_train_points: int = 0  # vectors the ivf quantizer is trained on; 0 -> 64 * ivf_nlist
    mmap: bool = True  # memory-map the FAISS file on open (flat/hnsw: IO_FLAG_MMAP_IFC, ivf: IO_FLAG_MMAP)
    # ... when it is at least this large (also the description index's arrays, together); smaller files are
    # read into memory, so damage to them on disk cannot reach a running server (docs/index.md, "Guarantees")
    mmap_min_bytes: int = 64 << 20
    descriptions: bool = True  # also build the lexical index over descriptions
    keep_versions: int = (
        3  # after each build/update, older versions beyond this many are deleted (0: keep all)
    )
    # sha256 of every file when a version is opened (sizes and row counts are always checked);
    # `rag index verify` always hashes. ~1 s per GB on one core; see docs/index.md.
    verify_checksums_on_open: bool = True
    # An update writes a small delta segment next to the unchanged base (docs/index.md, "Segments");
    # when delta rows + tombstones exceed this share of the base rows, it writes a fresh base
    # instead (compaction). 0 disables automatic compaction (`rag index compact` still works).
    compact_ratio: float = 0.1
    # ... but never for a delta smaller than this (delta rows + tombstones): searching a few
    # thousand extra vectors costs nothing, rewriting the base does
    compact_min_rows: int = 1000


@dataclass
class RetrievalConfig:
    """How a question becomes top-k rows (rag/retrieval.py)."""

    k: int = 5
    candidates: int = 50  # rows each retrieval path proposes before fusion
    fusion: Literal["rrf", "weighted", "dense"] = "weighted"
    lexical_weight: float = 0.35  # share of the fused score from title word overlap
    use_descriptions: bool = (
        True  # fuse in the description index (BM25 over title + description, index/lexical.py)
    )
    # weighted: the best description match scores this (plus 0.1 x title similarity); rrf: weight of its rank.
    # 0.4-0.6 tuned in docs/descriptions.md; keep it above min_score so described products count as found.
    description_weight: float = 0.5
    # rows the description index proposes to the fusion: each costs a row fetch and a title similarity
    # (~0.1 ms), and described products sit at the top of it (docs/descriptions.md)
    description_candidates: int = 20
    # run the description search in a worker thread while the question is embedded and the title index
    # searched (both release the GIL: on 2 cores the two paths overlap instead of adding up); false: one after
    # the other in the calling thread. Same hits either way (tests/test_retrieval_parallel.py).
    parallel_paths: bool = True
    min_score: float = 0.25  # below this the answer says nothing relevant was found
    # A question that names a product ("Who wrote The Clockmaker of Tallinn?") finds it only when at least
    # this share of the name's capitalised words occur in the top 3 rows (rag.query.named_product_coverage);
    # 0 turns the check off. Fused scores alone cannot tell an absent product from a present one.
    min_name_coverage: float = 0.5
    # FAISS threads for query-time search in serving processes: one query gains nothing from more, and on a
    # busy 2-core machine extra OpenMP threads cost milliseconds (docs/performance.md). 0 leaves FAISS's default.
    faiss_threads: int = 1
    rrf_k: int = 60


@dataclass
class PromptConfig:
    """The one prompt builder used for serving and for fine-tuning (rag/prompt.py)."""

    system: str = (
        "You answer questions about products of the Amazon catalog. Use only the numbered sources "
        "below; cite them as [1], [2]. If the sources do not answer the question, say so."
    )
    max_chars_per_source: int = 700
    max_sources: int = 5
    include_history_turns: int = 4


@dataclass
class GeneratorConfig:
    """Which backend writes the answer (rag/generators/)."""

    backend: Literal["extractive", "hf", "unsloth", "openai"] = "extractive"
    model: str | None = None  # hub id or local path (hf, unsloth); model name (openai)
    adapter: str | None = None  # LoRA adapter directory (peft)
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.15
    # hf: forbid any n-gram of this size from repeating in one answer (0: off). A small model that
    # loops on a sentence ("By X [1]. By X [1]. ...") runs into max_new_tokens; 8 stops the loop.
    no_repeat_ngram_size: int = 0
    # hf: past this many new tokens, the end-of-turn token's score grows by end_boost_rate per token
    # (transformers' exponential_decay_length_penalty, counted on the answer only), so an answer
    # longer than any training target ends at its own end token instead of at max_new_tokens (0: off)
    end_boost_after: int = 0
    end_boost_rate: float = 1.1
    load_in_4bit: bool = True  # only when CUDA and bitsandbytes are present
    # hf: precision of the weights. auto: bfloat16 on CUDA (4-bit NF4 only with load_in_4bit for a model
    # of 2B+ parameters), float32 on CPU. int8: dynamic int8 quantisation of the linear layers (CPU
    # only, torch.ao): faster decoding on CPU, different greedy text (docs/performance.md "LLM decoding").
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = "auto"
    # hf: fold the LoRA adapter into the base weights once at load (faster per token; not with 4-bit
    # weights, where the adapter stays separate); false keeps it separate (peft), e.g. to compare
    merge_adapter: bool = True
    # hf on CUDA: decode with a static KV cache and torch.compile (CUDA graphs); the first answer of
    # each batch size pays the compilation (tens of seconds)
    compile: bool = False
    # torch.compile mode of that step: max-autotune also tunes the matmul kernels (H200, Llama-3-8B
    # shape: 158.6 against 141.3 tokens/s; compiling takes about twice as long)
    compile_mode: Literal["max-autotune", "reduce-overhead"] = "max-autotune"
    # hf: questions generated together (left-padded, sorted by prompt length) by `rag eval answers`,
    # `rag eval ablation` and `rag compare`; 1 generates one question at a time
    batch_size: int = 8
    trust_remote_code: bool = False
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable that holds the key, never the key
    timeout_s: float = 60.0
    max_retries: int = 2
    max_sentences: int = 3  # extractive: sentences in the answer
    # LLM backends: what to do when the grounding check flags an answer (an unsupported or echoed
    # sentence, or a refusal although relevant rows were found). none: keep it (Answer.grounded says
    # so); trim: drop the flagged sentences, and answer extractively when nothing is left;
    # extractive: answer extractively. With a fallback, a streamed answer arrives once checked.
    grounding_fallback: Literal["none", "trim", "extractive"] = "none"
    # with a fallback: also fall back when the LLM's answer states less than this share of the facts
    # (numbers, names) the extractive answer finds in the top source (rag.grounding.agreement); 0: off
    fallback_min_agreement: float = 0.0
    device: str = "auto"


@dataclass
class FinetuneExamplesConfig:
    """How catalog rows become training examples (finetune/data.py)."""

    sample_size: int | None = None  # rows to draw after filtering (null: all)
    min_content_chars: int = 80  # rows with shorter descriptions teach nothing to describe
    max_content_chars: int = 20_000  # skip outliers (scraped pages, tables of contents)
    validation_fraction: float = 0.05  # share of PRODUCTS (uids) held out; no uid is in both splits
    context_k: int = 4  # rows in each example's context (gold + distractors from the retriever)
    gold_probability: float = 0.8  # chance the gold row is in the context (RAFT's P)
    no_gold_answer: Literal["abstain", "gold"] = (
        "abstain"  # target when the gold row is left out (docs/finetune.md)
    )
    answer_max_tokens: int = 160  # target = gold description cut at a sentence boundary within this budget
    portuguese_fraction: float = 0.25  # share of questions asked in Portuguese
    cite_sources: bool = True  # end the answer with the gold row's [n] marker
    retriever: Literal["project", "lexical"] = "project"  # project: index + rag.retrieval; lexical: no index
    # description: the gold description's first sentences; teacher: the sentences the extractive answerer
    # picks for the question (name first for "who wrote"), and fact questions only where the description
    # states that kind of fact (finetune/data.py, docs/finetune.md "Answer targets")
    answer_style: Literal["description", "teacher"] = "description"
    per_product: int = 1  # examples per product, each with its own question and context draw
    # teacher style: share of questions that ask a fact the description states (who, when, how many,
    # where, what award), where it states one; the rest describe the product
    fact_question_share: float = 0.7
    # a question file (eval/fact_questions.jsonl): the products of its "split": "heldout" questions are
    # never trained on, so the evaluation on them measures unseen products
    holdout_questions: str | None = None


@dataclass
class FinetuneLoraConfig:
    """LoRA adapter shape (peft.LoraConfig / unsloth get_peft_model)."""

    r: int = 16
    alpha: int = 16
    dropout: float = 0.0  # 0 lets unsloth use its fused LoRA kernels
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass
class FinetuneTrainingConfig:
    """Optimiser and loop settings (trl SFTConfig)."""

    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 4  # per device
    gradient_accumulation_steps: int = 4
    warmup_ratio: float = 0.03
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    optim: str = "auto"  # auto: adamw_8bit with bitsandbytes on CUDA, adamw_torch otherwise
    batching: Literal["padding_free", "packing", "padded"] = "padding_free"
    gradient_checkpointing: bool | Literal["unsloth"] = "unsloth"  # "unsloth" means true off unsloth
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 where supported, fp32 on CPU
    logging_steps: int = 1
    save_steps: int = 200
    save_total_limit: int = 2
    eval_steps: int | None = None  # null: evaluate at the end only
    seed: int = 0
    num_threads: int | None = None  # CPU: torch threads (null: torch's default)


@dataclass
class FinetuneTinyModelConfig:
    """Shape of the random-init model `tiny_model: true` builds (finetune/tiny.py)."""

    vocab_size: int = 2048  # byte-level BPE trained on the run's own examples
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    # Wider than transformers' 0.02: a random-init output head that small caps how confident the model
    # can get, so a LoRA on top learns the argmax but the loss stalls high.
    initializer_range: float = 0.1


@dataclass
class FinetuneConfig:
    """Fine-tuning runs (finetune/): `rag finetune --config configs/tinyllama-qlora.yaml`."""

    base_model: str = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"  # hub id or local directory
    output_dir: str = "runs/finetune"  # the run directory (adapter, logs, plots, checkpoints)
    data: str | None = None  # catalog file; null: the synthetic catalog, written into the run directory
    synthetic_rows: int = 2000  # rows of that synthetic catalog
    # synthetic rows added to a real `data` catalog (0: none): more products to learn the answering skill on
    synthetic_extra_rows: int = 0
    tiny_model: bool = False  # build a tiny random-init model in <output_dir>/base-model (CPU recipe, tests)
    tiny: FinetuneTinyModelConfig = field(default_factory=FinetuneTinyModelConfig)
    backend: Literal["auto", "unsloth", "transformers"] = "auto"  # auto: unsloth on CUDA, else transformers
    load_in_4bit: bool = True  # QLoRA; only with CUDA + bitsandbytes (ignored on CPU)
    max_seq_length: int = 1024
    chat_template: str | None = None  # Jinja text or a .jinja file, for models without a chat template
    trust_remote_code: bool = False
    examples: FinetuneExamplesConfig = field(default_factory=FinetuneExamplesConfig)
    lora: FinetuneLoraConfig = field(default_factory=FinetuneLoraConfig)
    training: FinetuneTrainingConfig = field(default_factory=FinetuneTrainingConfig)

    def problems(self) -> list[str]:
        """Range checks the type validation cannot express (called by _semantic_checks)."""
        out: list[str] = []
        ex, tr = self.examples, self.training
        for key, value in {
            "finetune.max_seq_length": self.max_seq_length,
            "finetune.lora.r": self.lora.r,
            "finetune.lora.alpha": self.lora.alpha,
            "finetune.examples.context_k": ex.context_k,
            "finetune.examples.answer_max_tokens": ex.answer_max_tokens,
            "finetune.training.batch_size": tr.batch_size,
            "finetune.training.gradient_accumulation_steps": tr.gradient_accumulation_steps,
            "finetune.synthetic_rows": self.synthetic_rows,
            "finetune.examples.per_product": ex.per_product,
        }.items():
            if isinstance(value, int) and value <= 0:
                out.append(f"{key}: must be > 0, got {value}")
        for key, fraction in {
            "finetune.examples.gold_probability": ex.gold_probability,
            "finetune.examples.portuguese_fraction": ex.portuguese_fraction,
            "finetune.examples.fact_question_share": ex.fact_question_share,
            "finetune.lora.dropout": self.lora.dropout,
            "finetune.training.warmup_ratio": tr.warmup_ratio,
        }.items():
            if isinstance(fraction, float) and not 0.0 <= fraction <= 1.0:
                out.append(f"{key}: must be between 0 and 1, got {fraction}")
        if isinstance(ex.validation_fraction, float) and not 0.0 <= ex.validation_fraction < 1.0:
            out.append(
                f"finetune.examples.validation_fraction: must be in [0, 1), got {ex.validation_fraction}"
            )
        if isinstance(tr.learning_rate, float) and not 0.0 < tr.learning_rate < 1.0:
            out.append(f"finetune.training.learning_rate: must be in (0, 1), got {tr.learning_rate}")
        if isinstance(self.synthetic_extra_rows, int) and self.synthetic_extra_rows < 0:
            out.append(f"finetune.synthetic_extra_rows: must be >= 0, got {self.synthetic_extra_rows}")
        if ex.holdout_questions and not Path(ex.holdout_questions).is_file():
            out.append(
                f"finetune.examples.holdout_questions: {ex.holdout_questions!r} is not a file "
                "(a question file such as eval/fact_questions.jsonl)"
            )
        if isinstance(self.lora.target_modules, list) and not self.lora.target_modules:
            out.append("finetune.lora.target_modules: must name at least one module (e.g. q_proj)")
        return out


@dataclass
class ApiConfig:
    """HTTP service (api/)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = "RAG_API_KEY"  # optional key for all routes
    admin_key_env: str = "RAG_ADMIN_KEY"  # always required for admin routes
    max_body_bytes: int = 1_000_000  # any request body except index uploads; larger -> 413
    max_upload_bytes: int = 200_000_000  # POST /v1/index/update bodies (JSON lines); larger -> 413
    max_question_chars: int = 2000  # longer question (or last user message) -> 422
    max_tokens_cap: int = 1024  # max_tokens / max_completion_tokens above this -> 422
    max_k: int = 20  # `k` (rows to retrieve) above this -> 422
    max_messages: int = 64  # chat turns per request; more -> 422
    max_concurrency: int = 8  # answers in flight; one more gets 429 + Retry-After instead of queueing
    request_timeout_s: float = (
        60.0  # answers slower than this -> 504 (a stream already started ends with an error event)
    )
    retry_after_s: int = 1  # Retry-After seconds sent with 429
    # a connection that has not sent a whole request head (request line + headers) this many seconds after
    # connecting, or after it began the next request, gets 408 and is closed (half-open connections pile up)
    header_timeout_s: float = 10.0
    model_id: str = "amazontitles-rag"  # the model id of /v1/models and of completions
    # other model names /v1/chat/completions answers to (listed by /v1/models); any other name -> 404
    model_aliases: list[str] = field(default_factory=list)
    # Paths served without the API key (probes and the schema; they reveal no catalog data).
    open_paths: list[str] = field(default_factory=lambda: ["/healthz", "/readyz", "/docs", "/openapi.json"])


@dataclass
class Config:
    """The whole configuration."""

    data: str = "data/synthetic_catalog.jsonl"  # catalog used by `rag index build` when --data is not given
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    api: ApiConfig = field(default_factory=ApiConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a section (annotations are classes)
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping (section), got {type(value).__name__}")
            return tp()
        return _build(tp, value, where, errors)
    if origin is Literal:
        if value not in typing.get_args(tp):
            errors.append(f"{where}: {value!r} is not {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, arg, where, trial)
            if not trial:
                return out
        errors.append(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            errors.append(f"{where}: expected {_type_name(tp)}, got {type(value).__name__}")
            return value
        return [_coerce(v, inner, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{where}: expected bool (true/false), got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{where}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{where}: expected float, got {type(value).__name__} {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{where}: expected str, got {type(value).__name__} {value!r}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], where: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=2, cutoff=0.5)
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            errors.append(f"{path}: unknown key{hint}; known keys: {', '.join(sorted(names))}")
            continue
        kwargs[key] = _coerce(value, hints[key], path, errors)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - only reachable through a schema bug
        errors.append(f"{where or 'config'}: {exc}")
        return cls()


def config_from_dict(values: dict[str, Any], *, origin: str = "config") -> Config:
    """Validate a plain mapping into a Config; raise ConfigError listing every problem."""
    errors: list[str] = []
    if not isinstance(values, dict):
        raise ConfigError([f"{origin}: the top level must be a mapping, got {type(values).__name__}"])
    config = _build(Config, values, "", errors)
    errors += _semantic_checks(config)
    if errors:
        raise ConfigError([f"{origin}: {e}" for e in errors])
    return config


def _index_checks(ic: IndexConfig) -> list[str]:
    errors = []
    target = ic.auto_recall_target
    if isinstance(target, float) and not 0.0 < target <= 1.0:
        errors.append(
            f"index.auto_recall_target: must be in (0, 1], got {target} (recall@10 against exact search)"
        )
    for key, value, low in (
        ("index.auto_tune_queries", ic.auto_tune_queries, 1),
        ("index.auto_ivf_min_rows", ic.auto_ivf_min_rows, 0),
        ("index.ivf_nlist", ic.ivf_nlist, 1),
        ("index.ivf_nprobe", ic.ivf_nprobe, 1),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            errors.append(f"{key}: must be >= {low}, got {value}")
    return errors


def _semantic_checks(config: Config) -> list[str]:
    errors = []
    positive = {
        "retrieval.k": config.retrieval.k,
        "retrieval.candidates": config.retrieval.candidates,
        "embedding.batch_size": config.embedding.batch_size,
        "embedding.bulk_batch_tokens": config.embedding.bulk_batch_tokens,
        "generator.max_new_tokens": config.generator.max_new_tokens,
        "generator.batch_size": config.generator.batch_size,
        "api.max_concurrency": config.api.max_concurrency,
        "catalog.max_line_bytes": config.catalog.max_line_bytes,
    }
    for key, value in positive.items():
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            errors.append(f"{key}: must be > 0, got {value}")
    processes = config.embedding.tokenizer_processes
    if isinstance(processes, int) and not isinstance(processes, bool) and processes < 0:
        errors.append(f"embedding.tokenizer_processes: must be >= 0 (0: a thread), got {processes}")
    if (
        isinstance(config.retrieval.lexical_weight, float)
        and not 0.0 <= config.retrieval.lexical_weight <= 1.0
    ):
        errors.append(
            f"retrieval.lexical_weight: must be between 0 and 1, got {config.retrieval.lexical_weight}"
        )
    if isinstance(config.generator.temperature, float) and not 0.0 <= config.generator.temperature <= 2.0:
        errors.append(f"generator.temperature: must be between 0 and 2, got {config.generator.temperature}")
    agree = config.generator.fallback_min_agreement
    if isinstance(agree, float) and not 0.0 <= agree <= 1.0:
        errors.append(f"generator.fallback_min_agreement: must be between 0 and 1, got {agree}")
    rate = config.generator.end_boost_rate
    if isinstance(rate, float) and not 1.0 <= rate <= 2.0:
        errors.append(f"generator.end_boost_rate: must be between 1 and 2 (1: no boost), got {rate}")
    after = config.generator.end_boost_after
    if isinstance(after, int) and not isinstance(after, bool) and after < 0:
        errors.append(f"generator.end_boost_after: must be >= 0 (0: off), got {after}")
    if isinstance(config.generator.top_p, float) and not 0.0 < config.generator.top_p <= 1.0:
        errors.append(f"generator.top_p: must be in (0, 1], got {config.generator.top_p}")
    if isinstance(config.embedding.static_pca_dims, int) and config.embedding.static_pca_dims < 0:
        errors.append(
            f"embedding.static_pca_dims: must be >= 0 (0 keeps every dimension), got {config.embedding.static_pca_dims}"
        )
    if (
        config.embedding.backend == "static"
        and not config.embedding.static_dir
        and str(config.embedding.model).strip().startswith("hashing")
    ):
        errors.append(
            "embedding.backend: 'static' is distilled from a transformer, not from the hashing embedder "
            f"({config.embedding.model!r}); set embedding.model to 'bundled:all-MiniLM-L6-v2' or a model directory"
        )
    errors += config.finetune.problems() if isinstance(config.finetune, FinetuneConfig) else []
    errors += _index_checks(config.index)
    if (
        isinstance(config.catalog.max_reject_fraction, float)
        and not 0.0 <= config.catalog.max_reject_fraction <= 1.0
    ):
        errors.append(
            f"catalog.max_reject_fraction: must be between 0 and 1, got {config.catalog.max_reject_fraction}"
        )
    if isinstance(config.api.header_timeout_s, float) and not config.api.header_timeout_s > 0:
        errors.append(f"api.header_timeout_s: must be > 0, got {config.api.header_timeout_s}")
    if isinstance(config.catalog.boilerplate_patterns, list):
        import re

        for i, pattern in enumerate(config.catalog.boilerplate_patterns):
            try:
                re.compile(str(pattern))
            except re.error as exc:
                errors.append(f"catalog.boilerplate_patterns[{i}]: not a valid regular expression ({exc})")
    return errors


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (so 8 is an int, true a bool)."""
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected KEY=VALUE, for example retrieval.k=8"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {text!r}: the key must be dotted names, for example retrieval.k"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _deep_set(target: dict[str, Any], path: list[str], value: Any) -> None:
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"{path}: config file not found (shipped configs are in configs/)"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    return data or {}


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults, then the YAML file (if any), then `--set` overrides; validate everything."""
    values: dict[str, Any] = read_yaml(path) if path else {}
    origin = str(path) if path else "defaults"
    override_errors: list[str] = []
    for text in overrides or []:
        try:
            keys, value = parse_override(text)
        except ConfigError as exc:
            override_errors += exc.errors
            continue
        _deep_set(values, keys, value)
    if overrides:
        origin += " + --set overrides"
    try:
        config = config_from_dict(values, origin=origin)
    except ConfigError as exc:
        raise ConfigError(override_errors + exc.errors) from None
    if override_errors:
        raise ConfigError(override_errors)
    return config


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
