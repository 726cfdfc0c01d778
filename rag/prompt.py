"""The one prompt builder, shared by serving (rag.answer) and fine-tuning (finetune.data).

The fine-tuned model must see at inference exactly the prompt it learned from, so both sides call
`build_messages`. Catalog text, history turns and the question are data, never instructions: anything in them that a
tokenizer could read as a special token (`<|eot_id|>`, `</s>`, `[INST]`, ...) is defanged by
`defang_special_tokens`. That list of shapes is the first line only: `rag.safety.encode_prompt` checks
the token ids against the tokenizer's own special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from rag.config import PromptConfig
from rag.types import CatalogRow, Hit

# <|anything|>, <s>, </s>, <unk>, <pad>, <eos>, <bos>, <|im_start|>, [INST], [/INST], <<SYS>>, <</SYS>>,
# Mistral's [TOOL_RESULTS] & co., Gemma's <start_of_turn>/<end_of_turn>, DeepSeek's <｜User｜> (full-width
# bars). The openai backend relies on this list alone (the server tokenizes); the hf backend checks the
# ids against its tokenizer's own special tokens as well (rag.safety.encode_prompt).
_SPECIAL_LIKE = re.compile(
    r"<\|[^<>|]{0,40}\|>|<｜[^<>｜]{0,40}｜>|</?(?:s|unk|pad|eos|bos|eot|mask|sep|cls)>|\[/?INST\]|<</?SYS>>"
    r"|\[/?(?:SYSTEM_PROMPT|TOOL_CALLS|AVAILABLE_TOOLS|TOOL_RESULTS|TOOL_CONTENT|THINK|IMG|IMG_BREAK|IMG_END)\]"
    r"|<(?:start|end)_of_(?:turn|image)>",
    re.IGNORECASE,
)
_ANGLE = str.maketrans({"<": "‹", ">": "›", "[": "⟦", "]": "⟧", "|": "¦", "｜": "¦"})


def defang_special_tokens(text: str, extra_tokens: Iterable[str] = ()) -> str:
    """Rewrite special-token look-alikes so no tokenizer parses them as control tokens.

    `extra_tokens` are a tokenizer's own special tokens (e.g. `tokenizer.all_special_tokens`), for
    vocabularies whose markers the generic pattern does not know.
    """
    out = _SPECIAL_LIKE.sub(lambda m: m.group(0).translate(_ANGLE), text)
    for token in extra_tokens:
        if token and len(token) > 1 and token in out:
            out = out.replace(
                token, token.translate(_ANGLE) if token.translate(_ANGLE) != token else " ".join(token)
            )
    return out


def clip_text(text: str, max_chars: int) -> str:
    """Cut at the last sentence (or word) boundary before max_chars."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = text[:max_chars]
    cut = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if cut >= max_chars // 2:
        return head[: cut + 1]
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head).rstrip() + " …"


def format_source(number: int, row: CatalogRow, max_chars: int, extra_tokens: Iterable[str] = ()) -> str:
    title = defang_special_tokens(row.title, extra_tokens)
    if row.content:
        body = defang_special_tokens(clip_text(row.content, max_chars), extra_tokens)
    else:
        body = "(no description in the catalog)"
    return f"[{number}] {title}\n{body}"


def build_user_message(
    question: str,
    rows: Sequence[CatalogRow],
    config: PromptConfig | None = None,
    extra_tokens: Iterable[str] = (),
) -> str:
    config = config or PromptConfig()
    extra = tuple(extra_tokens)
    rows = list(rows)[: config.max_sources]
    if rows:
        sources = "\n\n".join(
            format_source(i, row, config.max_chars_per_source, extra) for i, row in enumerate(rows, 1)
        )
    else:
        sources = "(no sources were found)"
    question = defang_special_tokens(question.strip(), extra)
    return f"Sources:\n{sources}\n\nQuestion: {question}"


def build_messages(
    question: str,
    rows: Sequence[CatalogRow | Hit],
    config: PromptConfig | None = None,
    history: Sequence[dict[str, str]] = (),
    extra_tokens: Iterable[str] = (),
) -> list[dict[str, str]]:
    """Chat messages for one turn: system, the last history turns, then sources + question.

    `rows` may be CatalogRows or Hits (their rows are used, in order). Everything but the system prompt
    is untrusted and defanged here; the hf backend's `rag.safety.encode_prompt` then makes sure on the
    token ids that none of it became a special token of the model's own vocabulary.
    """
    config = config or PromptConfig()
    plain = [r.row if isinstance(r, Hit) else r for r in rows]
    messages = [{"role": "system", "content": config.system}]
    if history and config.include_history_turns > 0:
        turns = list(history)[-2 * config.include_history_turns :]
        # History comes from the client (the API takes any turns), so it is untrusted like the rows.
        messages += [
            {"role": m["role"], "content": defang_special_tokens(str(m.get("content") or ""), extra_tokens)}
            for m in turns
            if m.get("role") in ("user", "assistant")
        ]
    messages.append({"role": "user", "content": build_user_message(question, plain, config, extra_tokens)})
    return messages
