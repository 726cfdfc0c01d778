from __future__ import annotations

import subprocess
import sys


def test_import_rag_does_not_import_heavy_packages() -> None:
    code = (
        "import sys, rag, rag.config, rag.prompt, rag.query, rag.pipeline, rag.retrieval, rag.chat, rag.cli\n"
        "rag.cli.build_parser()\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers', 'fastapi', 'unsloth') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"heavy modules imported at import time: {result.stdout.strip()}"
