"""Generator backends behind the `rag.types.Generator` protocol; `generator.backend` picks one.

    extractive  no weights: picks the description sentences most relevant to the question (default)
    hf          local or hub causal LM (+ optional LoRA adapter), 4-bit on CUDA, CPU otherwise
    unsloth     FastLanguageModel.for_inference on CUDA
    openai      any OpenAI-compatible /v1/chat/completions server (vLLM, TGI, llama.cpp, Ollama)

Backends are imported lazily so `import rag` never pulls torch.
"""

from __future__ import annotations

import importlib

from rag.config import Config
from rag.types import Generator

_BACKENDS = {
    "extractive": ("rag.generators.extractive", "ExtractiveGenerator"),
    "hf": ("rag.generators.hf", "HFGenerator"),
    "unsloth": ("rag.generators.unsloth_backend", "UnslothGenerator"),
    "openai": ("rag.generators.openai_backend", "OpenAIGenerator"),
}


def make_generator(config: Config) -> Generator:
    """Build the backend that `config.generator.backend` names (constructors take the whole Config)."""
    name = config.generator.backend
    if name not in _BACKENDS:
        raise ValueError(f"generator.backend: unknown backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    module_name, class_name = _BACKENDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(config)
