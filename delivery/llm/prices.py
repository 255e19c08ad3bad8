"""What models cost: the default price table and LLM_PRICES, which overrides or extends it."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Price(BaseModel):
    """What a model costs, per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0, description="price per million prompt tokens")
    output: float = Field(ge=0, description="price per million completion tokens")
    currency: str = Field(min_length=1, max_length=8)


# The models this service names (docs/api.md, "Usage, cost and budgets"). Prices as published by the providers
# in November 2026; override or extend them with LLM_PRICES.
DEFAULT_PRICES: dict[str, Price] = {
    "qwen-plus": Price(input=0.8, output=2.0, currency="CNY"),
    "qwen-turbo": Price(input=0.3, output=0.6, currency="CNY"),
    "qwen-max": Price(input=2.4, output=9.6, currency="CNY"),
    "gpt-4o-mini": Price(input=0.15, output=0.6, currency="USD"),
    "gpt-4o": Price(input=2.5, output=10.0, currency="USD"),
    "SmolLM2-135M-Instruct": Price(input=0.0, output=0.0, currency="USD"),  # your own CPU
    "scripted-test-double": Price(input=0.0, output=0.0, currency="USD"),
}


def parse_prices(text: str) -> dict[str, Price]:
    """LLM_PRICES: a JSON object, model name -> {"input": ..., "output": ..., "currency": ...}."""
    if not text.strip():
        return {}
    example = '{"my-model": {"input": 0.5, "output": 1.5, "currency": "USD"}}'
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError
        return {str(model): Price.model_validate(price) for model, price in raw.items()}
    except (ValueError, TypeError, ValidationError) as exc:
        detail = f": {exc}" if isinstance(exc, ValidationError) else ""
        raise ValueError(
            f"LLM_PRICES must be a JSON object of prices per million tokens, e.g. {example}{detail}"
        ) from None


class PriceTable:
    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}

    def price(self, model: str) -> Price | None:
        """The price of `model` (also when named with a provider prefix, e.g. `openai/gpt-4o`)."""
        return self._prices.get(model) or self._prices.get(model.rsplit("/", 1)[-1])
