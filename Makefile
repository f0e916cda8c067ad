# Two commands do everything: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
TORCH_SPEC ?= torch
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/qfnet demo --out demo_report

test: $(TEST_STAMP)
	$(BIN)/ruff check qfnet pricing tests benchmarks
	$(BIN)/python -m pytest -q qfnet pricing tests

lint: $(TEST_STAMP)
	$(BIN)/ruff check qfnet pricing tests benchmarks
	$(BIN)/ruff format --check qfnet pricing tests benchmarks

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) demo_report
