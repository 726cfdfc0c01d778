"""Nothing loads the embedding model unless a title must be embedded (issue 16).

A delete-only update, an update whose rows are all unchanged or change only their descriptions,
`verify`, `gc`, `rollback`, `versions` and `info` never call `index.embedder.load_embedder`; an
update that brings a new or retitled row calls it exactly once.

.venv/bin/python -m pytest tests/test_index_no_model.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

import index.embedder
from index.build import build_index, update_index
from index.store import IndexStore
from index.testing import hashing_config, product_row, write_catalog, write_rows
from rag.cli import main


class ModelLoaded(AssertionError):
    pass


@pytest.fixture()
def built(tmp_path: Path) -> tuple:
    """A two-version store (built with the real factory), then a factory that counts and refuses."""
    config = hashing_config(tmp_path / "index", extra=["index.descriptions=true"])
    build_index(config, [write_catalog(tmp_path / "a.jsonl", 40)], progress=False)
    update_index(config, [write_catalog(tmp_path / "b.jsonl", 5, start=40)], progress=False)
    return config, tmp_path


class Factory:
    """Stands in for `index.embedder.load_embedder`: records each call, refuses unless allowed."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[str] = []
        self.allow = False

    def __call__(self, cfg, *args, **kwargs):
        self.calls.append(cfg.model)
        if not self.allow:
            raise ModelLoaded(f"load_embedder({cfg.model!r}) called")
        return self.real(cfg, *args, **kwargs)


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> Factory:
    factory = Factory(index.embedder.load_embedder)
    monkeypatch.setattr(index.embedder, "load_embedder", factory)
    return factory


def _cli(config, *args: str) -> int:
    return main(
        ["index", *args, "--set", f"index.path={config.index.path}", "--set", "embedding.model=hashing:64"]
    )


def test_delete_only_update_does_not_load_the_model(built, loads) -> None:
    config, tmp_path = built
    gone = tmp_path / "gone.txt"
    gone.write_text("P0000001\nP0000002\nnot-there\n", encoding="utf-8")
    assert _cli(config, "update", "--delete", str(gone), "-q") == 0
    assert loads.calls == []
    snap = IndexStore.from_config(config).open_current()
    assert snap.rows == 43 and snap.get_by_uid("P0000001") is None and snap.get_by_uid("P0000003")


def test_unchanged_and_description_only_updates_do_not_load_the_model(built, loads) -> None:
    config, tmp_path = built
    same = write_catalog(tmp_path / "same.jsonl", 45)  # every row as it is in the index
    report = update_index(config, [same], progress=False)
    assert (report.changed, report.unchanged, report.embedded) == (False, 45, 0)
    described = write_rows(
        tmp_path / "described.jsonl",
        [dict(product_row(i), content=f"A new description number {i}.") for i in range(3)],
    )
    report = update_index(config, [described], progress=False)
    assert (report.metadata_only, report.embedded) == (3, 0)
    assert loads.calls == []


def test_a_new_title_loads_the_model_once(built, loads) -> None:
    config, tmp_path = built
    with pytest.raises(ModelLoaded):  # the refusing factory proves the new row reaches it
        update_index(config, [write_catalog(tmp_path / "c.jsonl", 2, start=100)], progress=False)
    assert loads.calls == ["hashing:64"]
    loads.allow = True
    report = update_index(config, [write_catalog(tmp_path / "d.jsonl", 3000, start=100)], progress=False)
    assert report.inserted == 3000 and report.embedded == 3000
    assert loads.calls == ["hashing:64", "hashing:64"]  # one load for the whole update, not one per chunk


def test_verify_gc_rollback_versions_info_do_not_load_the_model(built, loads) -> None:
    config, _tmp_path = built
    assert _cli(config, "verify", "--all") == 0
    assert _cli(config, "versions") == 0
    assert _cli(config, "info") == 0
    assert _cli(config, "rollback") == 0
    assert _cli(config, "gc", "--keep", "1") == 0
    assert _cli(config, "compact") in (0, 2)  # a version without a delta: nothing to compact is fine
    assert loads.calls == []
    assert len(IndexStore.from_config(config).versions()) >= 1
