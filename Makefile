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

.PHONY: install run test compose-test lint bench eval clean browser system-packages conformance-tools
TEST_STAMP := $(VENV)/.test-stamp
# The official MCP conformance suite (npm, pinned in tests/conformance/package-lock.json), run
# against our /mcp by tests/server/test_mcp_conformance.py.
CONFORMANCE_STAMP := tests/conformance/node_modules/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): requirements.txt requirements-core.txt requirements-local-model.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@ls $(WHEEL_CACHE)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) (portable CPU build, ~8 min, once)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir \
	    -w $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_CPP_VERSION); }
	$(BIN)/python -m pip install --quiet $(WHEEL_CACHE)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# The project itself, editable: every process imports it without sys.path edits.
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python main.py

$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

$(CONFORMANCE_STAMP): tests/conformance/package.json tests/conformance/package-lock.json
	cd tests/conformance && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(CONFORMANCE_STAMP)

conformance-tools: $(CONFORMANCE_STAMP)

# Debian packages the tests use for real: Chromium (+ a CJK font for screenshots), Nginx,
# Prometheus (scrapes an API process and a worker in tests/system/test_prometheus.py),
# RabbitMQ (the priority queue on an AMQP broker), and docker-compose v1 as a compose-file parser
# (no Docker engine is needed or used).
SYSTEM_PACKAGES := chromium:/usr/bin/chromium fonts-wqy-zenhei:/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc \
                   nginx-light:/usr/sbin/nginx docker-compose:/usr/bin/docker-compose \
                   prometheus:/usr/bin/prometheus rabbitmq-server:/usr/sbin/rabbitmq-server
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  [ -e "$${pair#*:}" ] || missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages for the tests:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

browser: system-packages

# ruff (lint and format) and mypy, as configured in pyproject.toml
lint: install $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install $(TEST_STAMP) $(CONFORMANCE_STAMP) system-packages lint
	$(BIN)/python test_import.py
	$(BIN)/python -m pytest -m "not compose"
	$(MAKE) compose-test

# docker-compose.yml for real (tests/compose): every service of every profile on podman through
# Docker Compose v2; deploy/compose/engine.sh installs and builds what it needs (docs/operations.md, "Deployment").
# On 2 cores: ~5.5 min with no image built yet (plus the apt-get install on a fresh machine),
# ~3.5 min once its images exist.
compose-test: install $(TEST_STAMP)
	$(BIN)/python -m pytest tests/compose

# The peer (bench/peer.py, LangGraph's server) in a virtualenv of its own: in ours its
# dependencies would move our pins (requirements-bench-peer.txt says which).
PEER_VENV  := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed-stamp
$(PEER_STAMP): requirements-bench-peer.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet -r requirements-bench-peer.txt
	touch $(PEER_STAMP)

# Benchmarks (not tests): ~35 min; results in docs/benchmarks.json and .png, method in docs/benchmarks.md.
# BENCH_QUICK=1 for a smoke run, BENCH_ONLY=publish,ttfe,... for some sections.
bench: install $(PEER_STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python -m bench.run

# The quality benchmark: 22 requirements through the crew on the configured provider (default:
# the local model), results in docs/quality.md and docs/quality.json. QUALITY_ONLY=id,... for some.
eval: install
	$(BIN)/python -m quality.run

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache
