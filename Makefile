# `make run` and `make test` set everything up on a fresh machine; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# llama-cpp-python compiles from source (~6 min on 2 cores; pip caches the wheel afterwards).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install run test clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python main.py

test: install
	$(BIN)/python test_import.py
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
