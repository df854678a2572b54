"""The config file (YAML, ``SPENDSTREAM_CONFIG``): price overrides, alert routes and grouping, detector thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from schemas.alert import AlertKind, Severity
from schemas.call_event import DataMode
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
    threshold_pct: Annotated[int, Field(ge=1, le=1000)] | None = None
    """A ``budget_threshold`` alert's threshold, in percent of its limit (the threshold's ``at``): send 100%
    to finance and 120% to an escalation channel."""


class Route(BaseModel):
    """Alerts matching ``match`` go to ``channel`` (a ``#name`` or a channel id): how a team subscribes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: RouteMatch = Field(default_factory=RouteMatch)
    channel: Channel
    webhook_env: Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")] | None = None
    """The environment variable holding an incoming-webhook URL for ``channel``; unset: the bot token posts."""


class AlertsConfig(BaseModel):
    """Where alerts go, and how an incident's alerts are grouped (in the manner of Alertmanager)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: list[Route] = Field(default_factory=list)
    """Tried in order; the first that matches an alert takes it."""
    group_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    """After a message, how long new incidents of its kind to its channel wait, to go together as one message."""
    group_interval_seconds: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    """Updates of an open incident are posted (in its thread) at most this often; a resolution at once."""
    inhibit: bool = True
    """A new incident that an open one explains (its cause seen through another key) goes in its thread."""
    check_minutes: Annotated[float, Field(gt=0, le=1440)] = 10.0
    """How often the alerter runs its scheduled checks against ClickHouse (daily spend, digests)."""
    digests: list[DigestConfig] = Field(default_factory=list)
    """Channels that asked for a morning digest of yesterday's spend."""

    @model_validator(mode="after")
    def _one_webhook_per_channel(self) -> AlertsConfig:
        webhooks: dict[str, str | None] = {}
        for route in self.routes:
            seen = webhooks.setdefault(route.channel, route.webhook_env)
            if seen != route.webhook_env:
                raise ValueError(
                    f"routes to {route.channel} disagree on webhook_env ({seen} vs {route.webhook_env}): "
                    "give each route to that channel the same one"
                )
        return self


Share = Annotated[float, Field(gt=0, le=1)]
Usd = Annotated[float, Field(ge=0)]
Factor = Annotated[float, Field(gt=1)]
Calls = Annotated[int, Field(ge=1)]
Millis = Annotated[float, Field(gt=0)]
SpendDimension = Literal["feature", "model", "provider", "agent_id", "tenant_id", "team", "user_id", "environment"]
_SPEND_DIMENSIONS: tuple[SpendDimension, ...] = ("feature", "model", "agent_id", "tenant_id", "team", "user_id")
_DIGEST_DIMENSIONS: tuple[SpendDimension, ...] = ("feature", "model", "tenant_id", "user_id")


class _Detector(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


class SpendSpikeConfig(_Detector):
    """Trailing-24h spend of a dimension's key against its normal for those 24 hours of the week, with its
    trend (``streams.detectors.baseline``)."""

    factor: Factor = 2.0
    critical_factor: Factor = 4.0
    min_excess_usd: Usd = 5.0
    """The spend above normal must also pass this: a $0.02 feature tripling is not worth a message."""
    min_baseline_days: Annotated[float, Field(gt=0, le=7)] = 2.0
    """Days of its own history a key needs before it is compared (no alert on an empty baseline) ..."""
    new_key_days: Annotated[float, Field(gt=0, le=28)] = 7.0
    """... or, for a key first seen after the first day of the history (a launched feature, an onboarded
    tenant, a new user), this many: its first days ramp up, and a week holds a weekend. Its spend still
    counts in its team's, model's and tenant's."""
    dimensions: list[SpendDimension] = Field(default_factory=lambda: list(_SPEND_DIMENSIONS))


class HourlyBurnConfig(_Detector):
    """Spend of the last 60 minutes against the key's normal for this hour of the week, with its trend
    (``streams.detectors.baseline``)."""

    factor: Factor = 3.0
    critical_factor: Factor = 6.0
    min_excess_usd: Usd = 2.0
    """The last hour must also pass by this the most the key spent in any hour like it (a feature of a few
    agent sessions an hour swings from nothing to twice its normal on its own)."""
    min_baseline_days: Annotated[float, Field(gt=0, le=7)] = 3.0
    """Days of its own history a key needs before it is compared (one hour of a small feature is noisy:
    its normal wants a few days like it) ..."""
    new_key_days: Annotated[float, Field(gt=0, le=28)] = 7.0
    """... or, for a key first seen after the first day of the history, this many (see ``spend_spike``)."""
    dimensions: list[SpendDimension] = Field(default_factory=lambda: list(_SPEND_DIMENSIONS))


class LatencyConfig(_Detector):
    """p95 latency and TTFT per feature and per model over a sliding window."""

    window_minutes: Annotated[int, Field(ge=1, le=60)] = 5
    warning_ms: Millis = 15_000
    critical_ms: Millis = 30_000
    ttft_warning_ms: Millis = 15_000
    ttft_critical_ms: Millis = 30_000
    min_calls: Calls = 10


class LoopConfig(_Detector):
    """One session (or, for calls without ``session_id``, one trace) repeating itself: a loop is
    repetition, not size (sizes are ``session_budget``'s)."""

    tool_window: Annotated[int, Field(ge=2, le=100)] = 15
    same_tool_share: Share = 0.8
    """More than this share of the last ``tool_window`` tool calls being one tool is a loop ...
    (one tool says nothing of its arguments: a healthy coding agent reads nine files in a row)"""
    min_run: Annotated[int, Field(ge=1, le=100)] = 8
    """... when the last ``min_run`` tool calls are that tool, one after the other."""
    prompt_repeats: Annotated[int, Field(ge=2)] = 3
    """The same ``prompt_hash`` sent this many times in a session is a loop (retries, ``attempt`` > 1, aside)."""
    same_args_repeats: Annotated[int, Field(ge=2)] = 3
    """One tool called with the same ``args_hash`` this many times in a session, with no new tool call in between,
    is a loop (retries aside); critical at three times as many."""
    session_idle_minutes: Annotated[float, Field(gt=0, le=1440)] = 30
    """A session quiet for this long is over: its incidents resolve and its state is dropped."""

    @model_validator(mode="before")
    @classmethod
    def _caps_moved(cls, data: object) -> object:
        caps = ("max_tool_calls", "max_tokens", "max_cost_usd")
        moved = sorted(k for k in caps if isinstance(data, dict) and k in data)
        if moved:
            raise ValueError(
                f"{', '.join(moved)} moved: session caps are set per feature or agent under "
                "detectors.session_budget.caps (see the README)"
            )
        return data


class SessionCap(BaseModel):
    """Caps a team set for the sessions of one feature or one agent (at least one cap)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    agent_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    max_tokens: Calls | None = None
    max_tool_calls: Calls | None = None
    max_cost_usd: Annotated[float, Field(gt=0)] | None = None
    max_minutes: Annotated[float, Field(gt=0)] | None = None
    """Wall clock from the session's first call to its latest."""

    @model_validator(mode="after")
    def _one_owner_and_a_cap(self) -> SessionCap:
        if (self.feature is None) == (self.agent_id is None):
            raise ValueError("name exactly one of feature or agent_id")
        if all(cap is None for cap in (self.max_tokens, self.max_tool_calls, self.max_cost_usd, self.max_minutes)):
            raise ValueError("set at least one of max_tokens, max_tool_calls, max_cost_usd, max_minutes")
        return self


class SessionBudgetConfig(_Detector):
    """A session passing the caps its team configured, or far outside its feature's own recent sessions."""

    caps: list[SessionCap] = Field(default_factory=list)
    outlier_factor: Factor = 4.0
    """Without caps, a session pages when its tokens, tool calls or cost pass this many times the
    99th percentile of its feature's sessions of the last ``history_days`` ..."""
    min_history_sessions: Annotated[int, Field(ge=10)] = 100
    """... once that feature has this many finished sessions (a new feature's first sessions never page)."""
    history_days: Annotated[float, Field(gt=0, le=30)] = 7.0


class ErrorRateConfig(_Detector):
    """Error, timeout and rate-limit share per provider, model and feature over a sliding window."""

    window_minutes: Annotated[int, Field(ge=1, le=60)] = 5
    warning_share: Share = 0.1
    critical_share: Share = 0.25
    min_calls: Calls = 20


class UnattributedConfig(_Detector):
    """Spend without a feature tag, as a share of all spend over the last 24 hours."""

    max_share: Share = 0.1
    min_usd: Usd = 1.0


class PromptRegressionConfig(_Detector):
    """A feature's newest prompt version against the version before it, per model call."""

    factor: Factor = 1.5
    min_calls: Calls = 50


class TenantConcentrationConfig(_Detector):
    """The top tenant's share of the last 24 hours' spend against its share over the 7 days before."""

    min_share: Share = 0.5
    jump: Share = 0.2
    min_usd: Usd = 10.0


class DailySpendConfig(_Detector):
    """Scheduled, from the daily rollup: yesterday's spend of a key against its 7-day daily average.

    It sees every worker's calls at once, so it catches what partial stream windows miss; a key the
    stream's spend_spike already alerted on that day is not raised again.
    """

    factor: Factor = 2.0
    critical_factor: Factor = 4.0
    min_excess_usd: Usd = 10.0
    min_baseline_days: Annotated[int, Field(ge=1, le=7)] = 3
    """Days of the 7 before that must have any spend at all (no alert from an empty history)."""
    dimensions: list[SpendDimension] = Field(default_factory=lambda: list(_SPEND_DIMENSIONS))


class BudgetForecastConfig(_Detector):
    """Scheduled, from the daily rollup: a monthly budget whose month is projected to end above it
    (``streams.forecast``), raised once per key and month, and again only when it gets worse."""

    min_history_days: Annotated[int, Field(ge=1, le=28)] = 3
    """Complete days of its own history a key needs before its projection may page (a new key's first
    days say little of its month)."""
    critical_share: Annotated[float, Field(gt=1)] = 1.2
    """A projection at this share of the limit or above is critical; above the limit and below it, a warning."""


class DetectorsConfig(BaseModel):
    """Thresholds of the stream detectors; every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repeat_hours: Annotated[float, Field(gt=0, le=168)] = 4.0
    """An incident still firing is raised again after this much event time (a reminder in its thread)."""
    spend_spike: SpendSpikeConfig = Field(default_factory=SpendSpikeConfig)
    hourly_burn: HourlyBurnConfig = Field(default_factory=HourlyBurnConfig)
    latency_p95: LatencyConfig = Field(default_factory=LatencyConfig)
    loop_detected: LoopConfig = Field(default_factory=LoopConfig)
    session_budget: SessionBudgetConfig = Field(default_factory=SessionBudgetConfig)
    error_rate: ErrorRateConfig = Field(default_factory=ErrorRateConfig)
    unattributed_spend: UnattributedConfig = Field(default_factory=UnattributedConfig)
    prompt_version_regression: PromptRegressionConfig = Field(default_factory=PromptRegressionConfig)
    tenant_concentration: TenantConcentrationConfig = Field(default_factory=TenantConcentrationConfig)
    daily_spend: DailySpendConfig = Field(default_factory=DailySpendConfig)
    budget_forecast: BudgetForecastConfig = Field(default_factory=BudgetForecastConfig)

    @model_validator(mode="after")
    def _critical_above_warning(self) -> DetectorsConfig:
        pairs = [
            ("spend_spike.critical_factor", self.spend_spike.critical_factor, self.spend_spike.factor),
            ("hourly_burn.critical_factor", self.hourly_burn.critical_factor, self.hourly_burn.factor),
            ("latency_p95.critical_ms", self.latency_p95.critical_ms, self.latency_p95.warning_ms),
            ("latency_p95.ttft_critical_ms", self.latency_p95.ttft_critical_ms, self.latency_p95.ttft_warning_ms),
            ("error_rate.critical_share", self.error_rate.critical_share, self.error_rate.warning_share),
            ("daily_spend.critical_factor", self.daily_spend.critical_factor, self.daily_spend.factor),
        ]
        for name, critical, warning in pairs:
            if critical < warning:
                raise ValueError(f"{name} ({critical}) must not be below its warning level ({warning})")
        return self


class DigestConfig(BaseModel):
    """A morning message to ``channel``: yesterday's spend (UTC), against the week before, and its top keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Channel
    hour_utc: Annotated[int, Field(ge=0, le=23)] = 8
    """Posted at the first check from this hour on (later the same day if the alerter was down)."""
    top: Annotated[int, Field(ge=1, le=20)] = 5
    dimensions: list[SpendDimension] = Field(default_factory=lambda: list(_DIGEST_DIMENSIONS))
    data_mode: DataMode = "real"
    """Which calls it sums: production calls, or the demo's."""


AlertsConfig.model_rebuild()


BudgetDimension = Literal[
    "user_id", "tenant_id", "feature", "agent_id", "team", "environment", "session_id", "workflow"
]
BudgetAction = Literal["alert", "throttle", "downgrade", "deny"]
BudgetPeriod = Literal["day", "month", "rolling_24h", "rolling_30d"]
LimitPeriod = Literal["daily", "monthly", "rolling_24h", "rolling_30d"]
"""How a budget state names its period: the config's ``day`` and ``month`` are ``daily`` and ``monthly``."""
_LIMIT_PERIOD: dict[str, LimitPeriod] = {"day": "daily", "month": "monthly", "rolling_24h": "rolling_24h",
                                         "rolling_30d": "rolling_30d"}  # fmt: skip
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ThrottleSeconds = Annotated[float, Field(gt=0, le=300)]
DEFAULT_THROTTLE_SECONDS = 5.0


class BudgetThreshold(BaseModel):
    """A mark on a budget's limit: reaching it raises a ``budget_threshold`` alert, and its ``action``
    holds from there on (with the actions of the thresholds below it: throttled past 90% and downgraded
    past 100% is both)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: Annotated[int, Field(ge=1, le=1000)]
    """Percent of the limit."""
    severity: Severity | None = None
    """Of its alert; by default ``warning`` below 100% and ``critical`` from 100% (routes match on it, and on
    ``threshold_pct``)."""
    action: BudgetAction = "alert"
    """What the SDK's guard does from this threshold on: ``alert`` adds nothing to the thresholds below."""
    throttle_seconds: ThrottleSeconds | None = None
    """How long the guard delays each call (``action: throttle``; 5 s when not given)."""
    downgrade_to: ModelName | None = None
    """The cheaper model to use (``action: downgrade``)."""

    @property
    def alert_severity(self) -> Severity:
        return self.severity or ("warning" if self.at < 100 else "critical")

    @property
    def delay_seconds(self) -> float:
        return self.throttle_seconds or DEFAULT_THROTTLE_SECONDS

    @model_validator(mode="after")
    def _consistent(self) -> BudgetThreshold:
        if self.action == "downgrade" and self.downgrade_to is None:
            raise ValueError(f"the {self.at}% threshold's action downgrade needs downgrade_to: the cheaper model")
        if self.action != "downgrade" and self.downgrade_to is not None:
            raise ValueError(f"the {self.at}% threshold's downgrade_to is only used with action downgrade")
        if self.action != "throttle" and self.throttle_seconds is not None:
            raise ValueError(f"the {self.at}% threshold's throttle_seconds is only used with action throttle")
        return self


DEFAULT_THRESHOLDS = (BudgetThreshold(at=70), BudgetThreshold(at=100), BudgetThreshold(at=120))
"""70% (a warning), 100% and 120% (critical); alerts only."""


class BudgetConfig(BaseModel):
    """A spend limit for one key of a dimension, or for each key (``*``), and its thresholds.

    The limit is ``limit_usd`` per ``period`` (a UTC ``day`` or ``month``, or the last 24 hours or 30 days),
    or, as before thresholds existed, ``daily_usd`` and/or ``monthly_usd``. Each threshold raises its
    alert once per period and says what the SDK's guard does from there on; without ``thresholds``, the
    defaults (70%, 100%, 120%), with the budget's ``action`` from 100%.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dimension: BudgetDimension
    key: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """A key of the dimension, or ``*`` for each key on its own (a key's own budget wins over ``*``)."""
    limit_usd: Annotated[float, Field(gt=0)] | None = None
    period: BudgetPeriod | None = None
    """Of ``limit_usd``: ``day`` and ``month`` are UTC calendar periods; ``rolling_24h`` (to the minute) and
    ``rolling_30d`` (to the hour) slide, spend leaving them as it ages."""
    daily_usd: Annotated[float, Field(gt=0)] | None = None
    monthly_usd: Annotated[float, Field(gt=0)] | None = None
    thresholds: list[BudgetThreshold] | None = Field(default=None, min_length=1, max_length=10)
    """In any order; none given: 70%, 100% and 120% (with ``action`` from 100%)."""
    action: BudgetAction | None = None
    """Without ``thresholds``: what the guard does from 100% (``alert`` when not given)."""
    downgrade_to: ModelName | None = None
    """Without ``thresholds``: the cheaper model of ``action: downgrade``."""
    throttle_seconds: ThrottleSeconds | None = None
    """Without ``thresholds``: the delay of ``action: throttle`` (5 s when not given)."""

    @model_validator(mode="after")
    def _consistent(self) -> BudgetConfig:
        budget = f"budget {self.dimension} {self.key!r}"
        if self.limit_usd is None and self.period is None and self.daily_usd is None and self.monthly_usd is None:
            raise ValueError(f"{budget} needs limit_usd with a period (or daily_usd, monthly_usd or both)")
        if (self.limit_usd is None) != (self.period is None):
            given, missing = ("limit_usd", "period") if self.period is None else ("period", "limit_usd")
            raise ValueError(f"{budget} gives {given} without {missing}: give both")
        if self.limit_usd is not None and (self.daily_usd is not None or self.monthly_usd is not None):
            raise ValueError(f"{budget} gives limit_usd and daily_usd/monthly_usd: use one form")
        if self.thresholds is not None:
            legacy = [n for n in ("action", "downgrade_to", "throttle_seconds") if getattr(self, n) is not None]
            if legacy:
                raise ValueError(f"{budget} gives thresholds and {', '.join(legacy)}: put them on a threshold")
            ats = [t.at for t in self.thresholds]
            if len(set(ats)) != len(ats):
                raise ValueError(f"{budget} has two thresholds at the same percent ({sorted(ats)})")
            denied = min((t.at for t in self.thresholds if t.action == "deny"), default=None)
            after = [t for t in self.thresholds if denied is not None and t.at > denied and t.action != "alert"]
            if after:
                raise ValueError(
                    f"{budget}: the {after[0].at}% threshold's {after[0].action} comes after deny at {denied}%, "
                    "when every call is refused: move it below or drop it"
                )
            return self
        action = self.action or "alert"
        if action == "downgrade" and self.downgrade_to is None:
            raise ValueError(f"{budget}: action downgrade needs downgrade_to: the cheaper model to use")
        if action != "downgrade" and self.downgrade_to is not None:
            raise ValueError(f"{budget}: downgrade_to is only used with action downgrade, not {action}")
        return self

    @property
    def limits(self) -> tuple[tuple[LimitPeriod, float], ...]:
        """Each limit with its period; the thresholds apply to each."""
        if self.limit_usd is not None and self.period is not None:
            return ((_LIMIT_PERIOD[self.period], self.limit_usd),)
        limits: list[tuple[LimitPeriod, float]] = []
        if self.daily_usd is not None:
            limits.append(("daily", self.daily_usd))
        if self.monthly_usd is not None:
            limits.append(("monthly", self.monthly_usd))
        return tuple(limits)

    @property
    def levels(self) -> tuple[BudgetThreshold, ...]:
        """The thresholds in increasing order; without ``thresholds``, the defaults with ``action`` at 100%."""
        if self.thresholds is not None:
            return tuple(sorted(self.thresholds, key=lambda t: t.at))
        action = self.action or "alert"
        at_limit = BudgetThreshold(
            at=100, action=action, downgrade_to=self.downgrade_to,
            throttle_seconds=self.throttle_seconds if action == "throttle" else None,
        )  # fmt: skip
        return DEFAULT_THRESHOLDS[0], at_limit, DEFAULT_THRESHOLDS[2]


class SpendstreamConfig(BaseModel):
    """The whole config file. Every section is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: PricesConfig = Field(default_factory=PricesConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    detectors: DetectorsConfig = Field(default_factory=DetectorsConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_budget_per_key(self) -> SpendstreamConfig:
        seen: set[tuple[str, str]] = set()
        for n, budget in enumerate(self.budgets):
            if (budget.dimension, budget.key) in seen:
                raise ValueError(
                    f"budgets.{n}: a second budget for {budget.dimension} {budget.key!r}: "
                    "put its limits in one entry (daily_usd and monthly_usd, or limit_usd with a period)"
                )
            seen.add((budget.dimension, budget.key))
        return self


def _budget_named(data: dict[str, object], loc: tuple[int | str, ...], reason: str) -> str:
    """``reason`` naming the budget it is about (``budgets.3`` says which entry, not which budget)."""
    budgets = data.get("budgets")
    if len(loc) < 2 or loc[0] != "budgets" or not isinstance(loc[1], int) or not isinstance(budgets, list):
        return reason
    entry = budgets[loc[1]] if loc[1] < len(budgets) else None
    if not isinstance(entry, dict) or f"budget {entry.get('dimension')} {entry.get('key')!r}" in reason:
        return reason
    return f"budget {entry.get('dimension')} {entry.get('key')!r}: {reason}"


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
        raise ConfigError(path, "", "the top level must be a mapping (prices:, alerts:, detectors:, budgets:)")
    try:
        return SpendstreamConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            reason = "unknown field: check its spelling against the README's configuration section"
        reason = _budget_named(data, first["loc"], reason)
        more = len(exc.errors()) - 1
        if more:
            reason += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(path, field, reason) from exc
