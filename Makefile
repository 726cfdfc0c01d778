# Two commands do all the set-up (README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow test-all lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, from the CPU wheel: a looser requirement would pull the CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[api,dev,fast]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/rag demo

test: install
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: install
	$(BIN)/python -m pytest -m "slow" -q

lint: install
	$(BIN)/ruff check rag index finetune api tests benchmarks

clean:
	rm -rf data runs .pytest_cache
