"""`unsloth` backend: unsloth's FastLanguageModel (fast 4-bit inference kernels) on a CUDA GPU.

    pip install .[gpu]        # unsloth, unsloth_zoo, bitsandbytes; needs an NVIDIA GPU
    rag ask "who wrote City of Djinns?" --set generator.backend=unsloth \\
        --set generator.model=models/TinyLlama-1.1B-Chat-v1.0 --set generator.adapter=runs/finetune/adapter

Loading is unsloth's (`FastLanguageModel.from_pretrained` + `FastLanguageModel.for_inference`);
prompt rendering, stop tokens, sampling caps, streaming and decoding are the `hf` backend's
(HFGenerator), so both backends answer a request the same way.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from rag.config import Config
from rag.generators.common import GeneratorError, missing_model_message
from rag.generators.hf import HFGenerator

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install .[gpu] (unsloth, unsloth_zoo, bitsandbytes) on a machine with an NVIDIA GPU"


def check_unsloth_available() -> None:
    """Raise a GeneratorError saying what is missing: a CUDA GPU, or the unsloth package."""
    import torch

    if not torch.cuda.is_available():
        raise GeneratorError(
            "generator.backend=unsloth needs an NVIDIA GPU with CUDA, and torch sees none here; "
            "use --set generator.backend=hf (CPU) or run on a GPU machine"
        )
    if importlib.util.find_spec("unsloth") is None:
        raise GeneratorError(f"generator.backend=unsloth needs the unsloth package: {INSTALL_HINT}")


class UnslothGenerator(HFGenerator):
    """HFGenerator whose model is loaded by unsloth and switched to its inference mode."""

    name = "unsloth"
    max_seq_length = 4096  # upper bound of the context unsloth prepares for; prompts are ~1-2k tokens

    def __init__(self, config: Config):
        super().__init__(config)
        # Fail at construction, not at the first question, when this machine cannot run unsloth.
        check_unsloth_available()

    def _load(self) -> tuple[Any, Any]:
        import unsloth  # noqa: F401 - must be imported before transformers' models to patch them
        from unsloth import FastLanguageModel

        gen = self.config.generator
        self.device = "cuda"
        self.quantized = bool(gen.load_in_4bit)
        try:
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=self.model_name,
                max_seq_length=self._context_length(),
                dtype=None,  # unsloth picks bfloat16 where the GPU supports it
                load_in_4bit=bool(gen.load_in_4bit),
                trust_remote_code=bool(gen.trust_remote_code),
            )
        except (OSError, ValueError) as exc:
            raise GeneratorError(missing_model_message(self.model_name, cause=exc)) from exc
        if self._tokenizer_source() != self.model_name:
            tokenizer = self._load_tokenizer()
        if self.adapter is not None:
            model = self._attach_adapter(model, tokenizer)
        FastLanguageModel.for_inference(model)
        return model, tokenizer

    def _context_length(self) -> int:
        """min(max_seq_length, the model's max_position_embeddings).

        Asking unsloth for more than the model was trained on makes it switch on RoPE scaling,
        which changes the model's outputs; a catalog answer never needs the longer context.
        """
        from transformers import AutoConfig

        try:
            model_config = AutoConfig.from_pretrained(self.model_name, **self._load_kwargs())
        except (OSError, ValueError) as exc:
            raise GeneratorError(missing_model_message(self.model_name, cause=exc)) from exc
        trained = getattr(model_config, "max_position_embeddings", None)
        return min(self.max_seq_length, int(trained)) if trained else self.max_seq_length

    def _attach_adapter(self, model: Any, tokenizer: Any) -> Any:
        from peft import PeftModel

        embeddings = model.get_input_embeddings()
        if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        try:
            # Kept as a PeftModel (no merge): unsloth's inference kernels handle LoRA layers.
            return PeftModel.from_pretrained(model, str(self.adapter), is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise GeneratorError(
                f"generator.adapter: cannot load the LoRA adapter {str(self.adapter)!r} onto {self.model_name!r} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); was it trained on this base model?"
            ) from exc
