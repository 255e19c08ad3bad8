# `make run` and `make test` set everything up on a fresh machine; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# llama-cpp-python compiles from source (~8 min on 2 cores, once: the wheel is kept in
# WHEEL_CACHE). The build is portable (AVX2/FMA): a native build may use AVX-512/AMX
# instructions that fault ("Illegal instruction") in VMs and sandboxes that do not grant them.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS  := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
                     -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
WHEEL_CACHE ?= $(HOME)/.cache/multi-agent-delivery/wheels/llama-cpp-$(LLAMA_CPP_VERSION)-avx2
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install run test bench clean browser
TEST_STAMP := $(VENV)/.test-stamp
# Debian's Chromium for the browser tests (Playwright's own browser download cannot work offline).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@ls $(WHEEL_CACHE)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) (portable CPU build, ~8 min, once)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir \
	    -w $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_CPP_VERSION); }
	$(BIN)/python -m pip install --quiet $(WHEEL_CACHE)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python main.py

$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

$(CHROMIUM):
	@echo "Installing Debian's chromium for the browser tests"
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

browser: $(CHROMIUM)

test: install $(TEST_STAMP) $(CHROMIUM)
	$(BIN)/python test_import.py
	$(BIN)/python -m pytest

# Benchmarks (not tests): ~15 min; results in docs/benchmarks.json/.png, method in docs/benchmarks.md.
# BENCH_QUICK=1 for a smoke run, BENCH_ONLY=publish,ttfe,... for some sections.
bench: install
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache
