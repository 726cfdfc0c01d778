"""Chat messages + answer -> token ids and labels, exactly as the model will see them at inference.

    python -c "from finetune.formatting import *"   # used by finetune/train.py

Rules (docs/finetune.md, "Formatting"):
- the model's own chat template renders the prompt (`add_generation_prompt=True`, the string the
  serving backends render) and the prompt + answer; a model without a template gets
  `FALLBACK_TEMPLATE`, which is then saved with the adapter so serving renders the same text;
- the answer ends with the template's end-of-turn token (`<|eot_id|>` for Llama-3, `</s>` for
  Mistral and TinyLlama chat, `<|im_end|>` for ChatML); a template that writes none gets the EOS;
  whatever the template puts after that token (a newline) is not trained on, so generation stops there;
- prompt and answer are tokenised separately and concatenated: the model is trained on the very
  prompt ids it gets at inference (a joint tokenisation can merge across the boundary), and the
  labels are -100 on every prompt token (loss on the answer only);
- the pad token is never the EOS (a pad == EOS tokenizer would mask out the EOS labels in some
  collators and the model would never learn to stop): an unused reserved token or `<unk>` is used,
  or `<|pad|>` is added;
- catalog text was defanged by `rag.prompt` (`<|eot_id|>` becomes `‹¦eot_id¦›`); `check_special_tokens`
  verifies on the ids that no catalog text became a control token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

# For tokenizers without a chat template (base models). The prompt part is the text the serving
# fallback (`rag.generators.common.fallback_prompt`) writes, so a run is consistent either way; the
# assistant turn ends with EOS. Saved with the adapter's tokenizer, so serving renders this template.
FALLBACK_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% else %}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] + '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)

# Tokens known to be unused pad candidates in common vocabularies, best first.
_PAD_CANDIDATES = (
    "<pad>",
    "[PAD]",
    "<|pad|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_250|>",
)

_SENTINEL = "Zq7Sentinel"


def prepare_tokenizer(tokenizer: Any, chat_template: str | None = None) -> bool:
    """Give the tokenizer a chat template and a pad token distinct from EOS, in place.

    Returns True when a token was added (the model's embeddings must then be resized).
    """
    if chat_template:
        tokenizer.chat_template = chat_template
    elif not getattr(tokenizer, "chat_template", None):
        log.warning("the tokenizer has no chat template: using the fallback template (docs/finetune.md)")
        tokenizer.chat_template = FALLBACK_TEMPLATE
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token: set one (tokenizer.eos_token) before fine-tuning")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos_id:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in _PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != eos_id:
            tokenizer.pad_token = candidate
            return False
    unk = getattr(tokenizer, "unk_token", None)
    if unk and tokenizer.unk_token_id is not None and tokenizer.unk_token_id != eos_id:
        tokenizer.pad_token = unk
        return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text serving renders: the chat template with the assistant header opened."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


@dataclass
class TurnFormat:
    """How the template closes an assistant turn."""

    end_token: str  # the special token that ends the answer (trained, so generation stops on it)
    end_is_from_template: bool  # False: the template writes none and EOS is appended


def turn_format(tokenizer: Any) -> TurnFormat:
    """Find the end-of-turn token by rendering a sentinel answer and reading what follows it."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.rindex(_SENTINEL) + len(_SENTINEL) :]
    specials = sorted(special_tokens(tokenizer), key=len, reverse=True)
    stripped = after.lstrip(" ")
    for token in specials:
        if stripped.startswith(token):
            return TurnFormat(token, True)
    return TurnFormat(tokenizer.eos_token, False)


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_example(
    tokenizer: Any, messages: Sequence[dict[str, str]], answer: str, fmt: TurnFormat | None = None
) -> Tokenized:
    """Token ids of prompt + answer + end token, labels -100 on the prompt."""
    fmt = fmt or turn_format(tokenizer)
    prompt_text = render_prompt(tokenizer, messages)
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError(
            "the chat template renders the prompt differently once an answer follows it, so the training "
            "prompt would not be the serving prompt; set finetune.chat_template to a template without that behaviour"
        )
    completion = full_text[len(prompt_text) :]
    if fmt.end_is_from_template:
        # Keep the answer up to and including its end-of-turn token; drop what the template adds after it.
        cut = completion.rfind(fmt.end_token)
        completion = completion[: cut + len(fmt.end_token)] if cut >= 0 else completion + fmt.end_token
    else:
        completion = completion.rstrip() + fmt.end_token
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids(fmt.end_token)
    if not completion_ids or completion_ids[-1] != end_id:
        raise ValueError(f"the answer does not end with the end token {fmt.end_token!r} after tokenisation")
    return Tokenized(
        prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids, len(prompt_ids)
    )


def special_tokens(tokenizer: Any) -> set[str]:
    """Every control token: the named ones and added tokens flagged special (transformers 5 keeps them apart)."""
    tokens = {t for t in getattr(tokenizer, "all_special_tokens", []) or [] if t}
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added.content))
    return tokens


def special_token_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return ids


def check_special_tokens(
    tokenizer: Any,
    tokenized: Tokenized,
    messages: Sequence[dict[str, str]],
    _cache: dict[tuple[int, int], int] | None = None,
) -> bool:
    """True when the ids hold exactly the control tokens the template itself writes.

    Renders the same message structure with placeholder contents and counts special ids: any extra
    one came from catalog, question or answer text and would act as a control token.
    """
    specials = special_token_ids(tokenizer)
    key = (id(tokenizer), len(messages))
    expected = (_cache or {}).get(key)
    if expected is None:
        plain = [{"role": m["role"], "content": "x"} for m in messages]
        reference = tokenize_example(tokenizer, plain, "x")
        expected = sum(1 for t in reference.input_ids if t in specials)
        if _cache is not None:
            _cache[key] = expected
    return sum(1 for t in tokenized.input_ids if t in specials) == expected
