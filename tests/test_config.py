from __future__ import annotations

from pathlib import Path

import pytest

from rag.config import Config, ConfigError, config_from_dict, load_config, parse_override

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#"), f"{path.name} must begin with a comment showing the command that uses it"
    assert isinstance(load_config(path), Config)


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "retrieval:\n  k: eight\n  kk: 3\nindex:\n  type: annoy\ngenerator:\n  temperature: 9.0\nnonsense: 1\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    joined = "\n".join(errors)
    assert len(errors) == 5, joined
    assert "retrieval.k: expected int, got str 'eight'" in joined
    assert "retrieval.kk: unknown key (did you mean k?)" in joined
    assert "index.type: 'annoy' is not one of 'auto', 'flat', 'hnsw', 'ivf'" in joined
    assert "generator.temperature: must be between 0 and 2" in joined
    assert "nonsense: unknown key" in joined
    assert all(str(path) in e for e in errors)


def test_dotted_overrides_are_typed_and_validated() -> None:
    config = load_config(
        None, ["retrieval.k=8", "generator.backend=hf", "index.mmap=false", "retrieval.lexical_weight=1"]
    )
    assert config.retrieval.k == 8
    assert config.generator.backend == "hf"
    assert config.index.mmap is False
    assert config.retrieval.lexical_weight == 1.0
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["retrieval.k"])
    with pytest.raises(ConfigError, match="retrieval.k: must be > 0"):
        load_config(None, ["retrieval.k=0"])
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("retrieval:\n  k: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config(path)


def test_missing_file_and_bad_sections() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/file.yaml")
    with pytest.raises(ConfigError, match="retrieval: expected a mapping"):
        config_from_dict({"retrieval": 3})
    with pytest.raises(ConfigError, match="boilerplate_patterns\\[0\\]: not a valid regular expression"):
        config_from_dict({"catalog": {"boilerplate_patterns": ["(unclosed"]}})
