"""`hf` backend: a local (or hub) causal LM with an optional peft LoRA adapter, through transformers.

    rag ask "who wrote City of Djinns?" --set generator.backend=hf \\
        --set generator.model=models/TinyLlama-1.1B-Chat-v1.0 --set generator.adapter=runs/finetune/adapter

Precision by model and device: bfloat16 on CUDA; 4-bit NF4 (bitsandbytes) only when
`generator.load_in_4bit` is set, bitsandbytes is installed AND the model is large enough for memory
to matter (at least `FOUR_BIT_MIN_PARAMETERS`; a 135M model in 4 bit is only slower); float32 on
CPU, never bitsandbytes. A model name from `rag model list` (`smollm2-135m`) stands for its pulled
directory (rag/models.py). The prompt is `request.messages` rendered with the tokenizer's chat template;
generation stops on eos and on the template's end-of-turn tokens. The model loads lazily on the
first request, or at `warm_up()`. `UnslothGenerator` (rag/generators/unsloth_backend.py) reuses
everything here except loading.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.config import Config
from rag.generators.common import (
    GeneratorError,
    Sampling,
    bitsandbytes_available,
    boost_end,
    choose_device,
    missing_model_message,
    no_pickled_compile_caches,
    offline_mode,
    resolve_sampling,
    stop_strings,
    stop_token_ids,
    strip_stop_strings,
)
from rag.types import GenerationRequest

log = logging.getLogger(__name__)

# Below this size 4-bit weights save little memory and cost speed (dequantisation per matmul).
FOUR_BIT_MIN_PARAMETERS = 2_000_000_000


def estimated_parameters(model: str) -> int | None:
    """Parameters of a local model directory, from its safetensors header(s); None if unknown."""
    directory = Path(model)
    if not directory.is_dir():
        return None
    total = 0
    for shard in directory.glob("*.safetensors"):
        try:
            with open(shard, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
        except (OSError, ValueError):
            return None
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict):
                count = 1
                for dim in entry.get("shape", []):
                    count *= int(dim)
                total += count
    return total or None


def adapter_base_model(adapter: str | Path) -> str | None:
    """The base model an adapter was trained on (`base_model_name_or_path` of adapter_config.json)."""
    path = Path(adapter) / "adapter_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("base_model_name_or_path")
    return str(value) if value else None


def check_adapter_dir(adapter: str | Path) -> Path:
    """An adapter directory must hold peft's adapter_config.json (what save_pretrained writes)."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise GeneratorError(
            f"generator.adapter: {str(adapter)!r} is not a directory; point it at the adapter folder that "
            "fine-tuning wrote (RUN_DIR/adapter, saved by peft's save_pretrained)"
        )
    if not (path / "adapter_config.json").is_file():
        raise GeneratorError(
            f"generator.adapter: {str(path)!r} has no adapter_config.json; is it a peft adapter directory "
            "(RUN_DIR/adapter) rather than a merged model? A merged model goes in generator.model"
        )
    return path


class HFGenerator:
    """Generator protocol over a transformers causal LM (+ LoRA adapter)."""

    name = "hf"

    def __init__(self, config: Config):
        self.config = config
        gen = config.generator
        self.adapter: Path | None = check_adapter_dir(gen.adapter) if gen.adapter else None
        model = gen.model or (adapter_base_model(self.adapter) if self.adapter else None)
        if not model:
            raise GeneratorError(
                f"generator.model: not set; the {self.name} backend needs a model directory or hub id "
                f"(--set generator.model=PATH), or generator.adapter pointing at a LoRA adapter whose "
                "adapter_config.json names its base model"
            )
        from rag.models import ModelPullError, resolve_model

        try:
            resolved = resolve_model(
                model, "generator.model" if gen.model else "generator.adapter's base model"
            )
        except ModelPullError as exc:
            raise GeneratorError(str(exc)) from exc
        self.model_name: str = resolved or model
        self.model: Any = None
        self.tokenizer: Any = None
        self.device: str = "cpu"
        self.quantized = False
        self.stop_ids: list[int] = []
        self.stop_texts: list[str] = []
        self._lock = threading.Lock()
        self.last_stats: dict[str, float] = {}  # tokens and seconds of the last generation
        self.min_new_tokens = 0  # benchmarks only: decode at least this many tokens (no early stop)
        self._static: Any = None  # the StaticDecoder of generator.compile, made on first use

    # ------------------------------------------------------------------ loading

    def warm_up(self) -> None:
        """Load model, tokenizer and adapter now (otherwise the first request does)."""
        if self.model is not None:
            return
        with self._lock:
            if self.model is not None:
                return
            started = time.perf_counter()
            model, tokenizer = self._load()
            model.eval()
            self.tokenizer = tokenizer
            self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
            if not self.stop_ids:
                raise GeneratorError(
                    f"the tokenizer of {self.model_name!r} has no eos token and no known end-of-turn token, "
                    "so generation could not stop before max_new_tokens; set tokenizer eos_token"
                )
            self.stop_texts = stop_strings(tokenizer, self.stop_ids)
            self.model = model
            log.info(
                "loaded %s (%s%s) in %.1fs; stop ids %s",
                self.model_name,
                self.device,
                ", 4-bit" if self.quantized else "",
                time.perf_counter() - started,
                self.stop_ids,
            )

    def _load_kwargs(self) -> dict[str, Any]:
        gen = self.config.generator
        return {"local_files_only": offline_mode(), "trust_remote_code": bool(gen.trust_remote_code)}

    def _tokenizer_source(self) -> str:
        # Fine-tuning saves the tokenizer next to the adapter (it may have added a pad token or a
        # chat template); that copy is the one the adapter was trained with.
        if self.adapter is not None and (self.adapter / "tokenizer_config.json").is_file():
            return str(self.adapter)
        return self.model_name

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        source = self._tokenizer_source()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **self._load_kwargs())
        except (OSError, ValueError) as exc:
            raise GeneratorError(missing_model_message(source, cause=exc)) from exc
        if _byte_level_bpe(tokenizer):
            # transformers ignores clean_up_tokenization_spaces for a BPE and warns on every
            # decode; a tokenizer converted from GGUF (an older `rag model pull`) still sets it
            tokenizer.clean_up_tokenization_spaces = False
        return tokenizer

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM

        gen = self.config.generator
        self.device = choose_device(gen.device)
        tokenizer = self._load_tokenizer()
        kwargs = self._load_kwargs()
        kwargs["dtype"] = self._torch_dtype()
        if self.device.startswith("cuda"):
            parameters = estimated_parameters(self.model_name)
            if not gen.load_in_4bit or gen.dtype != "auto":
                pass
            elif parameters is not None and parameters < FOUR_BIT_MIN_PARAMETERS:  # small
                log.info(
                    "generator.load_in_4bit: %s has %.0fM parameters; bfloat16 is faster at this size",
                    self.model_name,
                    parameters / 1e6,
                )
            elif bitsandbytes_available():
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.bfloat16,
                    bnb_4bit_use_double_quant=True,
                )
                self.quantized = True
            else:
                log.warning(
                    "generator.load_in_4bit: bitsandbytes is not installed (pip install .[gpu]); "
                    "loading in bfloat16 instead"
                )
            kwargs["device_map"] = {"": self.device}
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_name, **kwargs)
        except (OSError, ValueError) as exc:
            raise GeneratorError(missing_model_message(self.model_name, cause=exc)) from exc
        if not self.device.startswith("cuda"):
            # transformers wraps PreTrainedModel.to in @wraps(nn.Module.to): mypy reads the unbound signature
            model.to(self.device)  # type: ignore[arg-type]
        model = self._attach_adapter(model, tokenizer)
        if gen.dtype == "int8":
            model = quantize_int8(model)
        return model, tokenizer

    def _torch_dtype(self) -> Any:
        """generator.dtype for this device (int8 loads float32 weights, quantised after loading)."""
        import torch

        setting = self.config.generator.dtype
        cuda = self.device.startswith("cuda")
        if setting == "int8" and cuda:
            raise GeneratorError(
                "generator.dtype: int8 is dynamic quantisation for CPU decoding; on CUDA use auto (bfloat16) "
                "or generator.load_in_4bit=true for a large model"
            )
        if setting == "auto":
            return torch.bfloat16 if cuda else torch.float32  # CPU: half precision matmuls are slow here
        return {
            "float32": torch.float32,
            "int8": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[setting]

    def _attach_adapter(self, model: Any, tokenizer: Any) -> Any:
        if self.adapter is None:
            return model
        try:
            from peft import PeftModel
        except ImportError as exc:  # pragma: no cover - peft is a core dependency
            raise GeneratorError("generator.adapter needs peft: pip install peft") from exc
        # Fine-tuning may have added tokens (a pad token): the base embeddings must match the
        # tokenizer the adapter was trained with before its weights are loaded.
        embeddings = model.get_input_embeddings()
        if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        try:
            model = PeftModel.from_pretrained(model, str(self.adapter), is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise GeneratorError(
                f"generator.adapter: cannot load the LoRA adapter {str(self.adapter)!r} onto {self.model_name!r} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); was it trained on this base model?"
            ) from exc
        if not self.quantized and self.config.generator.merge_adapter:
            # Folding the LoRA weights into the base removes the adapter's per-token overhead; with
            # 4-bit weights that would dequantize, so a quantized model keeps the adapter separate.
            model = model.merge_and_unload()
        return model

    # ------------------------------------------------------------------ generation

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of the prompt these chat messages render to (chat template or fallback, special
        tokens included): what generation reads, and what the API's usage.prompt_tokens reports."""
        self.warm_up()
        return len(self._prompt_ids(GenerationRequest(question="", hits=[], messages=list(messages))))

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids: `request.messages` through the chat template (or the fallback),
        encoded by `rag.safety.encode_prompt`: no special-token id comes from rows, history or question."""
        from rag.safety import PromptInjectionError, encode_prompt

        try:
            return encode_prompt(self.tokenizer, request.messages)
        except PromptInjectionError as exc:
            raise GeneratorError(f"{self.model_name}: {exc}") from exc

    def _encode(self, request: GenerationRequest) -> dict[str, Any]:
        return self._batch_inputs([self._prompt_ids(request)])

    def _batch_inputs(self, prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
        """Left-padded input_ids and attention_mask for prompts of different lengths.

        Left padding puts every prompt's last token in the last column, so the batch decodes in step;
        generate() derives the position ids from the attention mask, so a padded row reads as its
        unpadded self."""
        import torch

        width = max(len(p) for p in prompts)
        pad = self._pad_id()
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:
                ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
                mask[row, width - len(prompt) :] = 1
        device = self._input_device()
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else int(self.stop_ids[0])

    def _input_device(self) -> Any:
        try:
            return next(self.model.parameters()).device
        except (StopIteration, AttributeError):  # pragma: no cover
            return self.device

    def _generation_config(self, sampling: Sampling, prompt_length: int = 0) -> Any:
        from transformers import GenerationConfig

        values: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": not sampling.greedy,
            "repetition_penalty": sampling.repetition_penalty,
            "eos_token_id": list(self.stop_ids),
            "pad_token_id": self._pad_id(),
        }
        if self.min_new_tokens:
            values["min_new_tokens"] = min(self.min_new_tokens, sampling.max_new_tokens)
        if not sampling.greedy:
            values.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if self._compiled():
            from transformers import CompileConfig

            from rag.generators.static_decode import cache_length

            # One static cache size for all prompts (rounded up to STATIC_CACHE_STEP): a new size would
            # recompile the decoding step.
            values.update(
                cache_implementation="static",
                max_cache_len=cache_length(prompt_length + sampling.max_new_tokens),
                compile_config=CompileConfig(fullgraph=False, mode="reduce-overhead"),
            )
        else:
            values["disable_compile"] = True
        return GenerationConfig(**values)

    def _compiled(self) -> bool:
        """generator.compile: static KV cache + torch.compile decoding, on CUDA only."""
        return bool(self.config.generator.compile) and self.device.startswith("cuda") and not self.quantized

    def _run_generate(self, inputs: dict[str, Any], sampling: Sampling, **extra: Any) -> Any:
        import torch

        prompt_length = inputs["input_ids"].shape[1]
        processors = []
        if sampling.no_repeat_ngram_size:
            processors.append(answer_ngram_blocker(sampling.no_repeat_ngram_size, prompt_length))
        if sampling.end_boost_after:
            processors.append(answer_end_boost(sampling, prompt_length, self.stop_ids))
        if processors:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList(processors)
        if self._compiled():
            no_pickled_compile_caches()
        with torch.inference_mode():
            return self.model.generate(
                **inputs, generation_config=self._generation_config(sampling, prompt_length), **extra
            )

    def _decode_row(self, output: Any, row: int, prompt_len: int) -> tuple[str, int, bool]:
        """(text, tokens generated, stopped at an end-of-turn token) of one row of generate()'s output."""
        new = output[row, prompt_len:].tolist()
        stopped = False
        for i, token in enumerate(
            new
        ):  # generate() stops at a stop id (then pads); drop it and anything after
            if token in self.stop_ids:
                new, stopped = new[:i], True
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return strip_stop_strings(text, self.stop_texts).strip(), len(new), stopped

    def _decode_new(self, output: Any, prompt_len: int) -> tuple[str, int, bool]:
        return self._decode_row(output, 0, prompt_len)

    def generate(self, request: GenerationRequest) -> str:
        """One answer, through the same token loop as `stream` (rag/generators/static_decode.py
        explains why it is not `model.generate`: on one request its loop is faster, on CPU and GPU).
        Batches go through `generate_batch`."""
        return "".join(self.stream(request)).strip()

    def generate_batch(
        self, requests: Sequence[GenerationRequest], batch_size: int | None = None
    ) -> list[str]:
        """Answer many requests, `batch_size` at a time (generator.batch_size): the same texts as
        `generate` one by one under greedy decoding, in a fraction of the time on a GPU.

        Requests are grouped by their sampling settings and sorted by prompt length, so a batch pads
        little; each request gets its own new_tokens and finish_reason."""
        self.warm_up()
        size = max(1, int(batch_size or self.config.generator.batch_size))
        texts: list[str] = [""] * len(requests)
        groups: dict[Sampling, list[tuple[int, list[int]]]] = {}
        for i, request in enumerate(requests):
            sampling = resolve_sampling(self.config.generator, request)
            groups.setdefault(sampling, []).append((i, self._prompt_ids(request)))
        started = time.perf_counter()
        total = 0
        for sampling, items in groups.items():
            items.sort(key=lambda item: len(item[1]))
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                inputs = self._batch_inputs([ids for _, ids in chunk])
                output = self._run_generate(inputs, sampling)
                width = inputs["input_ids"].shape[1]
                for row, (i, _ids) in enumerate(chunk):
                    text, n, stopped = self._decode_row(output, row, width)
                    texts[i] = text
                    requests[i].new_tokens = n
                    requests[i].finish_reason = "stop" if stopped or n < sampling.max_new_tokens else "length"
                    total += n
        self._record(total, time.perf_counter() - started)
        return texts

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield text pieces as the tokens are generated, in the calling thread.

        Eager decoding runs its own token loop (prefill, then one forward per token over a KV cache
        written in place, each token chosen as transformers' `generate` would: `TokenPicker`), so the
        first piece follows the prefill; a generate() thread feeding a streamer ran at a third of
        the speed on a GPU. `generate` of one request joins these pieces, so both run at one speed;
        under greedy decoding the text equals transformers' `generate` (tested). Closing the
        iterator early stops at the next token. With generator.compile (CUDA) the tokens come from
        the static-cache loop with its compiled step (rag/generators/static_decode.py).
        """
        self.warm_up()
        sampling = resolve_sampling(self.config.generator, request)
        if self._compiled():
            token_ids = self._static_decoder().tokens(
                self._prompt_ids(request), sampling, self.stop_ids, min_new_tokens=self.min_new_tokens
            )
        else:
            token_ids = self._decode_loop(self._encode(request), sampling)
        started = time.perf_counter()
        tokens: list[int] = []
        emitted = ""
        stopped = False
        try:
            for token in token_ids:
                if token in self.stop_ids:
                    stopped = True
                    break
                tokens.append(token)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # a character split over tokens: wait for its last byte
                cut = strip_stop_strings(text, self.stop_texts)
                if len(cut) > len(emitted):
                    yield cut[len(emitted) :]
                    emitted = cut
                if len(cut) < len(text):  # a stop marker decoded as text: end here
                    stopped = True
                    break
            # what is still held back (a character cut by the end of the answer, as in generate's
            # text): after the last token, whether the answer ran out or stopped
            rest = strip_stop_strings(
                self.tokenizer.decode(tokens, skip_special_tokens=True), self.stop_texts
            )
            if len(rest) > len(emitted):
                yield rest[len(emitted) :]
        finally:
            request.new_tokens = len(tokens)
            request.finish_reason = "stop" if stopped or len(tokens) < sampling.max_new_tokens else "length"
            self._record(len(tokens), time.perf_counter() - started)

    def _decode_loop(self, inputs: dict[str, Any], sampling: Sampling) -> Iterator[int]:
        """Token ids one by one (batch of one): a prefill, then a forward per token on a KV cache
        written in place, each token chosen by `TokenPicker` (generate()'s penalty, answer n-gram
        ban and sampling, kept incrementally)."""
        import torch

        from rag.generators.static_decode import TokenPicker, reserved_cache

        step_input = inputs["input_ids"]
        mask = inputs["attention_mask"]
        # inference mode is per thread, and a server may pull each piece of a stream in another
        # worker thread: every step enters it afresh, and no `yield` happens inside it
        with torch.inference_mode():
            picker = TokenPicker(
                step_input, int(self.model.config.vocab_size), sampling, self.stop_ids, self.min_new_tokens
            )
            cache = reserved_cache(self.model.config, step_input.shape[1] + sampling.max_new_tokens)
        for _ in range(sampling.max_new_tokens):
            with torch.inference_mode():
                out = self.model(
                    input_ids=step_input,
                    attention_mask=mask,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                next_id = picker.pick(out.logits[:, -1, :])
                token = int(next_id[0])
                picker.add(token)
                step_input = next_id[:, None]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            yield token

    def _static_decoder(self) -> Any:
        if self._static is None:
            from rag.generators.static_decode import StaticDecoder

            self._static = StaticDecoder(
                self.model, compile=True, compile_mode=self.config.generator.compile_mode
            )
        return self._static

    def _record(self, tokens: int, seconds: float) -> None:
        self.last_stats = {
            "new_tokens": float(tokens),
            "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_name!r}, adapter={str(self.adapter) if self.adapter else None!r})"


def _byte_level_bpe(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(getattr(backend, "model", None)).__name__ == "BPE"


def answer_ngram_blocker(size: int, prompt_length: int) -> Any:
    """A logits processor that forbids an n-gram of `size` tokens to occur twice in the ANSWER.

    transformers' own `no_repeat_ngram_size` also counts the prompt, so it forbids copying any
    `size`-token phrase from the sources, which is what a grounded answer does. This one looks only
    at the tokens generated after `prompt_length`: it ends a sentence loop and leaves quoting alone.
    """
    import torch
    from transformers import LogitsProcessor

    class AnswerNgramBlocker(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for row in range(input_ids.shape[0]):
                answer = input_ids[row, prompt_length:].tolist()
                if len(answer) < size:
                    continue
                prefix = answer[len(answer) - size + 1 :]
                banned = [
                    answer[i + size - 1]
                    for i in range(len(answer) - size + 1)
                    if answer[i : i + size - 1] == prefix
                ]
                if banned:
                    scores[row, banned] = -torch.inf
            return scores

    return AnswerNgramBlocker()


def answer_end_boost(sampling: Sampling, prompt_length: int, stop_ids: Sequence[int]) -> Any:
    """`boost_end` as a logits processor for `generate` (the batched path): every row of a
    left-padded batch has produced the same number of tokens, input length minus `prompt_length`."""
    import torch
    from transformers import LogitsProcessor

    stops = sorted({int(s) for s in stop_ids})

    class AnswerEndBoost(LogitsProcessor):
        index: Any = None  # the stop ids on the scores' device, made at the first step

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.index is None and stops:
                self.index = torch.tensor(stops, dtype=torch.long, device=scores.device)
            return boost_end(scores, self.index, int(input_ids.shape[1]) - prompt_length, sampling)

    return AnswerEndBoost()


def quantize_int8(model: Any) -> Any:
    """generator.dtype=int8: the linear layers with int8 weights, activations quantised per call (CPU).

    torch.ao's dynamic quantisation (fbgemm/x86 kernels) is marked deprecated in favour of torchao,
    but is what runs here without compiling; it reads a quarter of float32's bytes per token.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            quantize_dynamic = torch.ao.quantization.quantize_dynamic
        except AttributeError as exc:  # pragma: no cover - a torch without torch.ao.quantization
            raise GeneratorError(
                "generator.dtype: int8 needs torch.ao.quantization, which this torch build lacks; "
                "use generator.dtype=float32"
            ) from exc
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
