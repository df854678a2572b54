from __future__ import annotations

from datetime import date

import pytest
from genai_prices import Usage, calc_price

from schemas.config import PriceOverride
from streams.pricing import GENAI_PRICES_SOURCE, OVERRIDE_SOURCE, Pricer

DAY = date(2026, 11, 1)


@pytest.mark.parametrize(
    ("provider", "model", "input_tokens", "output_tokens", "cache_read", "cache_write"),
    [
        ("openai", "gpt-4o", 1000, 100, 500, 0),
        ("openai", "gpt-4o-mini", 20000, 3000, 0, 0),
        ("anthropic", "claude-sonnet-4-5", 5000, 800, 1000, 2000),
        ("anthropic", "claude-sonnet-4-5", 300_000, 800, 0, 0),
        ("google", "gemini-2.5-pro", 250_000, 1000, 10_000, 0),
    ],
)
def test_cost_matches_genai_prices(
    provider: str, model: str, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> None:
    prices = Pricer().unit_prices(provider, model, DAY, input_tokens)
    assert prices is not None and prices.source == GENAI_PRICES_SOURCE
    ours = prices.cost(input_tokens, output_tokens, cache_read, cache_write)
    usage = Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )  # fmt: skip
    theirs = calc_price(usage, model, provider_id=provider).total_price
    assert ours == pytest.approx(float(theirs), rel=1e-9)


def test_override_wins_and_defaults_cache_prices_to_input() -> None:
    pricer = Pricer([PriceOverride(provider="openai", model="gpt-4o", input_per_mtok=1, output_per_mtok=2)])
    prices = pricer.unit_prices("openai", "gpt-4o", DAY, 10)
    assert prices is not None
    assert (prices.input, prices.output, prices.cache_read, prices.source) == (1, 2, 1, OVERRIDE_SOURCE)
    assert prices.cost(1_000_000, 1_000_000, 0, 0) == pytest.approx(3.0)


def test_unknown_model_is_unpriced() -> None:
    assert Pricer().unit_prices("acme", "secret-model-9", DAY, 10) is None
