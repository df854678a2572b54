"""The config file (YAML, ``SPENDSTREAM_CONFIG``): price overrides now; budgets, routes and thresholds build on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schemas.alert import AlertKind, Severity
from schemas.exceptions import ConfigError

PerMTok = Annotated[float, Field(ge=0, le=100_000)]


class PriceOverride(BaseModel):
    """A price for a self-hosted, fine-tuned or negotiated model, in USD per million tokens.

    An override wins over the maintained price table for the same provider and model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    model: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    input_per_mtok: PerMTok
    """Price of an uncached prompt token."""
    output_per_mtok: PerMTok
    """Price of a generated token (reasoning included)."""
    cache_read_per_mtok: PerMTok | None = None
    """Price of a prompt token read from the cache; defaults to ``input_per_mtok``."""
    cache_write_per_mtok: PerMTok | None = None
    """Price of a prompt token written to the cache; defaults to ``input_per_mtok``."""


class PricesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    overrides: list[PriceOverride] = Field(default_factory=list)


Channel = Annotated[str, StringConstraints(pattern=r"^(#[a-z0-9][a-z0-9._-]{0,79}|[CG][A-Z0-9]{8,})$")]


class RouteMatch(BaseModel):
    """Which alerts a route takes; every field given must match (``key`` may use ``*`` wildcards)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AlertKind | None = None
    severity: Severity | None = None
    dimension: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    key: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class Route(BaseModel):
    """Alerts matching ``match`` go to ``channel`` (a ``#name`` or a channel id): how a team subscribes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: RouteMatch = Field(default_factory=RouteMatch)
    channel: Channel


class AlertsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: list[Route] = Field(default_factory=list)
    """Tried in order; the first that matches an alert takes it."""


class SpendstreamConfig(BaseModel):
    """The whole config file. Every section is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: PricesConfig = Field(default_factory=PricesConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)


def load_config(path: Path | str | None) -> SpendstreamConfig:
    """Read and validate the config file; ``None`` gives the defaults.

    Raises:
        ConfigError: naming the file, the field and the reason.
    """
    if path is None:
        return SpendstreamConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read it ({exc.strerror}): check SPENDSTREAM_CONFIG") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the top level must be a mapping (prices:, alerts:, budgets:)")
    try:
        return SpendstreamConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        reason = first["msg"]
        if first["type"] == "extra_forbidden":
            reason = "unknown field: check its spelling against the README's configuration section"
        more = len(exc.errors()) - 1
        if more:
            reason += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(path, field, reason) from exc
