"""The HTTP API (FastAPI): grounded answers, OpenAI-compatible chat, products, probes, metrics, admin update.

    rag serve --port 8000          # see docs/api.md

FastAPI is imported only when `create_app` is called, so `import api` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(config: Any, rag: Any = None) -> Any:
    """Build the FastAPI app (see api.app.create_app)."""
    from api.app import create_app as _create_app

    return _create_app(config, rag)
