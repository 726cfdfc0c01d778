"""Helpers shared by the LLM backends (hf, unsloth, openai): sampling caps, stop tokens, prompt
rendering with the tokenizer's chat template, device choice, and the errors they raise.

    python -c "from rag.generators.common import resolve_sampling; print(resolve_sampling(None))"

Nothing here imports torch or transformers at module import time; functions that need them take
the objects (tokenizer, ...) as arguments or import inside.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.config import GeneratorConfig
from rag.types import GenerationRequest

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- caps
# Per-request values (HTTP API, `rag compare`, callers of rag.answer) are clamped into these
# ranges instead of rejected, so a client asking for "max_tokens: 100000" gets a bounded answer
# rather than an error; the config file itself is validated strictly by rag.config.
MAX_NEW_TOKENS_CAP = 4096  # more than any catalog answer needs; bounds latency and memory
MIN_NEW_TOKENS = 1
TEMPERATURE_CAP = 2.0  # above 2 the output of small models is noise
TOP_P_FLOOR = 0.01  # top_p == 0 would keep no token; 0.01 keeps (at least) the best one
REPETITION_PENALTY_RANGE = (1.0, 2.0)
END_BOOST_RATE_CAP = 2.0

# End-of-turn markers of the common chat templates. Generation stops on the tokenizer's eos AND
# on whichever of these the vocabulary holds: a chat-tuned model ends its turn with the turn
# marker (<|eot_id|> for Llama 3, <|im_end|> for ChatML/Qwen), which is not always its eos.
END_OF_TURN_TOKENS = (
    "<|eot_id|>",  # Llama 3
    "<|im_end|>",  # ChatML (Qwen, many fine-tunes)
    "</s>",  # Llama 2, Mistral, TinyLlama (Zephyr template)
    "<|end|>",  # Phi-3
    "<end_of_turn>",  # Gemma
    "<|endoftext|>",  # GPT-2 family, Qwen base
    "<|end_of_text|>",  # Llama 3 base
)


class GeneratorError(RuntimeError):
    """A backend cannot run as configured; the message says which config key or package to fix."""


@dataclass(frozen=True)
class Sampling:
    """Resolved generation settings for one request (after caps)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size twice in one generation (hf backend)
    end_boost_after: int = 0  # > 0: the end token's score grows past this many new tokens (hf backend)
    end_boost_rate: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def resolve_sampling(config: GeneratorConfig | None, request: GenerationRequest | None = None) -> Sampling:
    """Merge config defaults with the request's overrides and clamp them into the safe ranges.

    temperature 0 means greedy decoding (top_p is then irrelevant and not passed on).
    """
    config = config or GeneratorConfig()
    max_new = config.max_new_tokens
    temperature = config.temperature
    top_p = config.top_p
    if request is not None:
        max_new = request.max_new_tokens if request.max_new_tokens is not None else max_new
        temperature = request.temperature if request.temperature is not None else temperature
        top_p = request.top_p if request.top_p is not None else top_p
    return Sampling(
        max_new_tokens=int(_clamp(int(max_new), MIN_NEW_TOKENS, MAX_NEW_TOKENS_CAP)),
        temperature=float(_clamp(float(temperature), 0.0, TEMPERATURE_CAP)),
        top_p=float(_clamp(float(top_p), TOP_P_FLOOR, 1.0)),
        repetition_penalty=float(_clamp(float(config.repetition_penalty), *REPETITION_PENALTY_RANGE)),
        no_repeat_ngram_size=max(0, int(config.no_repeat_ngram_size)),
        end_boost_after=max(0, int(config.end_boost_after)),
        end_boost_rate=float(_clamp(float(config.end_boost_rate), 1.0, END_BOOST_RATE_CAP)),
    )


def boost_end(scores: Any, stop_index: Any, produced: int, sampling: Sampling) -> Any:
    """generator.end_boost_after / end_boost_rate, in place on a (batch, vocab) score tensor: once
    `produced` new tokens exceed `end_boost_after`, each stop id's score gains |score| * (rate**n - 1),
    n the tokens past the threshold (transformers' ExponentialDecayLengthPenalty, on the answer).
    Scores already at -inf (a ban) stay there."""
    import torch

    after = sampling.end_boost_after
    if after <= 0 or produced <= after or sampling.end_boost_rate <= 1.0 or stop_index is None:
        return scores
    stop_scores = scores[:, stop_index]
    # capped so that float32 neither overflows to inf nor makes 0 * inf = nan
    factor = math.exp(min((produced - after) * math.log(sampling.end_boost_rate), 69.0)) - 1.0
    gain = stop_scores.abs() * factor
    scores[:, stop_index] = torch.where(torch.isfinite(stop_scores), stop_scores + gain, stop_scores)
    return scores


# --------------------------------------------------------------------------- tokenizer helpers


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The ids that end generation: eos (tokenizer and model generation config) + end-of-turn markers.

    Only markers that are single tokens of this vocabulary count; the unknown-token id never does.
    """
    ids: list[int] = []

    def add(value: Any) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple, set)):
            for v in value:
                add(v)
            return
        value = int(value)
        if value >= 0 and value not in ids:
            ids.append(value)

    add(getattr(tokenizer, "eos_token_id", None))
    if generation_config is not None:
        add(getattr(generation_config, "eos_token_id", None))
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for token in END_OF_TURN_TOKENS:
        token_id = vocab.get(token)
        if token_id is not None and token_id != unk:
            add(token_id)
    return ids


def stop_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text of the stop tokens, to cut from decoded output should a backend keep them."""
    out = []
    for token_id in ids:
        try:
            text = tokenizer.convert_ids_to_tokens(int(token_id))
        except Exception:  # noqa: BLE001 - a tokenizer without that id simply has no stop string for it
            continue
        if isinstance(text, str) and text and text not in out:
            out.append(text)
    return out


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def fallback_prompt(messages: Sequence[dict[str, str]]) -> str:
    """Plain-text rendering for tokenizers without a chat template (base models).

        ### System:\\n...\\n\\n### User:\\n...\\n\\n### Assistant:\\n

    A base model was never trained on this format, so answers are weaker; fine-tune with a chat
    template (finetune/ sets one) or use a chat model. The tokenizer's bos is added by encoding.
    """
    parts = []
    for m in messages:
        role = str(m.get("role", "user")).capitalize()
        parts.append(f"### {role}:\n{m.get('content', '')}")
    parts.append("### Assistant:\n")
    return "\n\n".join(parts)


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, bool]:
    """Render chat messages to the prompt text; returns (text, uses_chat_template).

    With a chat template the text already holds bos and the assistant header, so it must be
    encoded with add_special_tokens=False. Templates that refuse a system turn (old Mistral ones
    raise "Conversation roles must alternate") get the system text folded into the first user turn.
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not has_chat_template(tokenizer):
        return fallback_prompt(messages), False
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:
        if not messages or messages[0]["role"] != "system":
            raise GeneratorError(f"the tokenizer's chat template rejected the messages: {exc}") from exc
        system, rest = messages[0]["content"], messages[1:]
        if rest and rest[0]["role"] == "user":
            rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
        else:
            rest.insert(0, {"role": "user", "content": system})
        text = tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some versions return a list for batched input
        text = text[0]
    return text, True


def strip_stop_strings(text: str, stops: Sequence[str]) -> str:
    """Cut the text at the first stop string (a backend that decodes special tokens may keep them)."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# --------------------------------------------------------------------------- environment


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no hub access."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def choose_device(setting: str = "auto") -> str:
    """'auto' picks cuda when torch sees a GPU, else cpu; an explicit 'cuda' without a GPU is an error."""
    import torch

    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise GeneratorError(
            f"generator.device: {setting!r} but torch sees no CUDA GPU; use --set generator.device=auto or cpu"
        )
    if setting not in ("cpu", "mps") and not setting.startswith("cuda"):
        raise GeneratorError(f"generator.device: unknown device {setting!r}; use auto, cpu, cuda or cuda:N")
    return setting


def bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def missing_model_message(
    model: str, key: str = "generator.model", cause: BaseException | None = None
) -> str:
    """The error text for a model that cannot be loaded: what to download and which key to set."""
    offline = offline_mode()
    reason = f" ({type(cause).__name__}: {str(cause).splitlines()[0][:300]})" if cause else ""
    hint = (
        f"download it where the hub is reachable, e.g. `hf download {model} --local-dir models/NAME`, "
        f"then point {key} at that directory (--set {key}=models/NAME)"
    )
    mode = " HF_HUB_OFFLINE is set, so only local files are used." if offline else ""
    return f"{key}: cannot load {model!r}{reason}.{mode} Give a local directory saved with save_pretrained, or {hint}."


def no_pickled_compile_caches() -> None:
    """torch.compile's on-disk FX-graph and autograd caches are pickles: keep them off (the
    project writes no pickle); the compiled kernels themselves are still cached as source."""
    try:
        import torch._inductor.config as inductor_config
    except ImportError:  # pragma: no cover
        return
    inductor_config.fx_graph_cache = False
    if hasattr(inductor_config, "autograd_cache"):
        inductor_config.autograd_cache = False
    try:
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = False
    except (ImportError, AttributeError):  # pragma: no cover
        pass
