"""The models agents talk to: Qwen on DashScope or any OpenAI-compatible endpoint, the bundled
local SmolLM2 model, or the scripted test double. `providers.make_llm_factory` picks one."""
