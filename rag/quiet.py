"""Keep third-party progress bars and advisory warnings off the terminal.

    python -c "from rag.quiet import quiet_libraries; quiet_libraries()"

`rag` commands call it at start (not with --verbose): the only progress output left is the
project's own, one bar per stage on stderr (index build/update, fine-tuning, evaluation with
--progress). transformers' "Loading weights" bar and huggingface_hub's download bars read these
switches when they are imported, so they are set in the environment first.
"""

from __future__ import annotations

import os
import sys


def quiet_libraries() -> None:
    """Keep third-party progress bars and warnings off the terminal (set before they are imported)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also transformers' "Loading weights" bar
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "huggingface_hub" in sys.modules:  # already imported: it read the environment at import
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:  # already imported: its switches read the environment once
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
