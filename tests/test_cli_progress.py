"""Long `rag` commands print their own progress (one bar per stage, stderr) and no library noise.

.venv/bin/python -m pytest tests/test_cli_progress.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_NOISE = ("Loading weights", "Batches:", "Warning:", "warnings.warn")


def _rag(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "TRANSFORMERS_VERBOSITY"))
    }
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "rag.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _stages(stderr: str) -> set[str]:
    return {
        line.split(":")[0].strip()
        for line in stderr.replace("\r", "\n").splitlines()
        if "|" in line or "rows/s" in line
    }


def test_index_build_and_update_show_their_stages_and_no_library_bars(tmp_path: Path) -> None:
    from rag.synthetic import write_synthetic_catalog

    catalog = write_synthetic_catalog(tmp_path / "catalog.jsonl", rows=60, seed=0)
    index = f"index.path={tmp_path / 'index'}"  # the default embedder: the bundled MiniLM (transformers)
    built = _rag("index", "build", "--data", str(catalog), "--set", index, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert {"reading catalog", "embedding titles"} <= _stages(built.stderr), built.stderr
    new = tmp_path / "new.jsonl"
    new.write_text(
        json.dumps({"uid": "NEW1", "title": "The Zebra Quilt Almanac", "content": "A quilting guide."}) + "\n"
    )
    updated = _rag("index", "update", "--data", str(new), "--set", index, cwd=tmp_path)
    assert updated.returncode == 0, updated.stderr
    for result in (built, updated):
        noise = [word for word in LIBRARY_NOISE if word in result.stderr]
        assert not noise, f"library output on stderr: {noise}\n{result.stderr}"
        assert "Loading weights" not in result.stdout
