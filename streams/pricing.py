"""Unit prices for a call, from the config's overrides first and the maintained genai-prices table second.

The per-event path asks :meth:`Pricer.unit_prices` once per call; the lookup behind it (a scan of
the price table with model-name matching) runs once per provider, model and day and is cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from genai_prices import data_snapshot
from genai_prices.types import TieredPrices

from schemas.config import PriceOverride

logger = logging.getLogger(__name__)

GENAI_PRICES_SOURCE = f"genai-prices {version('genai-prices')}"
OVERRIDE_SOURCE = "config override"
CALLER_SOURCE = "stated by caller"

_PRICE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """USD per million tokens, as used to price one call, and where they came from."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    source: str

    @property
    def per_mtok(self) -> tuple[float, float, float, float]:
        """Input, output, cache-read and cache-write prices, the order ``llm_calls`` stores them in."""
        return (self.input, self.output, self.cache_read, self.cache_write)

    def cost(self, input_tokens: int, output_tokens: int, cache_read_tokens: int, cache_write_tokens: int) -> float:
        """Cost in USD; ``input_tokens`` counts every prompt token, cached ones included."""
        uncached = input_tokens - cache_read_tokens - cache_write_tokens
        return (
            uncached * self.input
            + cache_read_tokens * self.cache_read
            + cache_write_tokens * self.cache_write
            + output_tokens * self.output
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class _PriceSheet:
    """A model's prices on one day: a base band and the bands that start above an input-token threshold."""

    bands: tuple[tuple[int, UnitPrices], ...]  # (applies when input tokens > start), ascending

    def for_input(self, input_tokens: int) -> UnitPrices:
        chosen = self.bands[0][1]
        for start, prices in self.bands[1:]:
            if input_tokens > start:
                chosen = prices
        return chosen


def _at(value: Decimal | TieredPrices | None, band_start: int) -> float | None:
    """The price of one key in the band that starts above ``band_start`` input tokens (-1: the base band)."""
    if value is None:
        return None
    if isinstance(value, TieredPrices):
        applicable = value.base
        for tier in value.tiers:  # ascending by start
            if tier.start <= band_start:
                applicable = tier.price
        return float(applicable)
    return float(value)


def _sheet_from_genai(model_price: Any) -> _PriceSheet:
    values = {key: getattr(model_price, key, None) for key in _PRICE_KEYS}
    starts = sorted(
        {tier.start for value in values.values() if isinstance(value, TieredPrices) for tier in value.tiers}
    )
    bands = []
    for start in [-1, *starts]:
        at = {key: _at(value, start) for key, value in values.items()}
        input_price = at["input_mtok"] or 0.0
        bands.append(
            (
                start,
                UnitPrices(
                    input=input_price,
                    output=at["output_mtok"] or 0.0,
                    cache_read=at["cache_read_mtok"] if at["cache_read_mtok"] is not None else input_price,
                    cache_write=at["cache_write_mtok"] if at["cache_write_mtok"] is not None else input_price,
                    source=GENAI_PRICES_SOURCE,
                ),
            )
        )
    return _PriceSheet(tuple(bands))


def _sheet_from_override(override: PriceOverride) -> _PriceSheet:
    prices = UnitPrices(
        input=override.input_per_mtok,
        output=override.output_per_mtok,
        cache_read=override.cache_read_per_mtok
        if override.cache_read_per_mtok is not None
        else override.input_per_mtok,
        cache_write=override.cache_write_per_mtok
        if override.cache_write_per_mtok is not None
        else override.input_per_mtok,
        source=OVERRIDE_SOURCE,
    )
    return _PriceSheet(((-1, prices),))


class Pricer:
    """Prices calls from overrides and the genai-prices table, caching each model's sheet per day."""

    def __init__(self, overrides: list[PriceOverride] | tuple[PriceOverride, ...] = ()) -> None:
        self._overrides = {(o.provider.lower(), o.model.lower()): _sheet_from_override(o) for o in overrides}
        self._sheets: dict[tuple[str, str, date], _PriceSheet | None] = {}

    def unit_prices(self, provider: str, model: str, day: date, input_tokens: int) -> UnitPrices | None:
        """The unit prices for a call, or ``None`` when neither the overrides nor the table know the model."""
        key = (provider, model, day)
        try:
            sheet = self._sheets[key]
        except KeyError:
            sheet = self._sheets[key] = self._lookup(provider, model, day)
        return None if sheet is None else sheet.for_input(input_tokens)

    def _lookup(self, provider: str, model: str, day: date) -> _PriceSheet | None:
        # Names are looked up as the event model stores them: stripped. The ingestor prices a padded
        # name before the model strips it (see streams.ingest), and must not warn for it.
        provider, model = provider.strip(), model.strip()
        override = self._overrides.get((provider.lower(), model.lower()))
        if override is not None:
            return override
        snapshot = data_snapshot.get_snapshot()
        when = datetime.combine(day, time(12), tzinfo=UTC)
        for provider_id in (provider, None):
            try:
                _, info = snapshot.find_provider_model(model, None, provider_id, None)
            except LookupError:
                continue
            return _sheet_from_genai(info.get_prices(when))
        logger.warning("no price known for provider=%r model=%r: its calls are stored unpriced", provider, model)
        return None
