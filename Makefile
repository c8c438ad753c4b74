# The two newcomer commands are `make demo` and `make test`; both create the venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench lint format clean-venv

setup: $(STAMP)

# torch first, from the CPU wheel: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Two pytest workers, one test file each at a time (--dist loadfile: a file's module fixtures,
# such as one search several tests assert on, are built once). The suite is mostly one
# process at a time: the last serial run kept about one of two cores busy (14.5 min CPU in
# 15.5 min wall), so a second worker uses the other. --no-loadscope-reorder keeps the order of
# tests/conftest.py (the longest files first) instead of xdist's order by test count.
test: setup
	$(BIN)/python -m pytest -q --durations=10 -n 2 --dist loadfile --no-loadscope-reorder

demo: setup
	$(BIN)/ratio-search demo

bench: setup
	$(BIN)/python benchmarks/run_all.py

lint: setup
	$(BIN)/ruff check ratio_search tests benchmarks
	$(BIN)/ruff format --check ratio_search tests benchmarks

format: setup
	$(BIN)/ruff format ratio_search tests benchmarks
	$(BIN)/ruff check --fix ratio_search tests benchmarks

clean-venv:
	rm -rf $(VENV)
