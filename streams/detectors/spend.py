"""Spend detectors: ``spend_spike``, ``hourly_burn``, ``unattributed_spend`` and ``tenant_concentration``.

They share one store: per data mode, dimension and key, spend by event-time hour (the last eight
days) and by minute (the last hour). Baselines count only the days the detector has seen data of
that data mode (warm-up from the rollups included), so nothing fires on an empty baseline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.config import HourlyBurnConfig, SpendSpikeConfig, TenantConcentrationConfig, UnattributedConfig
from streams.detectors import calls as c
from streams.detectors.findings import RELAXED, Finding, severity_of, until
from streams.unpriced import sql_string

HOUR = 3600
DAY_HOURS = 24
WEEK_HOURS = 7 * DAY_HOURS
_KEEP_HOURS = WEEK_HOURS + DAY_HOURS + 1
SPEND_COLUMNS = {"feature": c.FEATURE, "model": c.MODEL, "provider": c.PROVIDER, "agent_id": c.AGENT_ID,
                 "tenant_id": c.TENANT_ID, "team": c.column("team"), "user_id": c.column("user_id"),
                 "environment": c.column("environment")}  # fmt: skip
UNATTRIBUTED = "unattributed"


@dataclass(slots=True)
class _Series:
    hours: dict[int, float] = field(default_factory=dict)
    """Spend by hour number (epoch seconds // 3600)."""
    minutes: dict[int, float] = field(default_factory=dict)
    """Spend by minute number, the last 60 minutes."""

    def add(self, at: float, usd: float) -> None:
        hour = int(at // HOUR)
        minute = int(at // 60)
        self.hours[hour] = self.hours.get(hour, 0.0) + usd
        self.minutes[minute] = self.minutes.get(minute, 0.0) + usd

    def between(self, first_hour: int, last_hour: int) -> float:
        """Spend of the hours ``first_hour`` to ``last_hour``, both included."""
        return sum(usd for hour, usd in self.hours.items() if first_hour <= hour <= last_hour)

    def last_minutes(self, now: float, minutes: int) -> float:
        """Spend of the ``minutes`` minutes up to ``now`` (calls of later minutes, read early, wait)."""
        end = int(now // 60)
        return sum(usd for minute, usd in self.minutes.items() if end - minutes < minute <= end)

    def prune(self, now: float) -> None:
        oldest_hour = int(now // HOUR) - _KEEP_HOURS
        if self.hours and min(self.hours) < oldest_hour:
            self.hours = {h: u for h, u in self.hours.items() if h >= oldest_hour}
        oldest_minute = int(now // 60) - 60
        if self.minutes and min(self.minutes) <= oldest_minute:
            self.minutes = {m: u for m, u in self.minutes.items() if m > oldest_minute}


@dataclass(slots=True)
class _Mode:
    first_hour: int | None = None
    series: dict[tuple[str, str], _Series] = field(default_factory=dict)
    touched: set[tuple[str, str]] = field(default_factory=set)
    """Keys whose spend changed, or whose incident is open: evaluated at the next check."""
    pruned_hour: int = 0


class SpendDetectors:
    """The four spend detectors over one shared store."""

    def __init__(
        self,
        spike: SpendSpikeConfig,
        burn: HourlyBurnConfig,
        unattributed: UnattributedConfig,
        concentration: TenantConcentrationConfig,
    ) -> None:
        self._spike = spike
        self._burn = burn
        self._unattributed = unattributed
        self._concentration = concentration
        dims = set(spike.dimensions if spike.enabled else ()) | set(burn.dimensions if burn.enabled else ())
        if unattributed.enabled:
            dims.add("feature")
        if concentration.enabled:
            dims.add("tenant_id")
        self._columns = [(dim, SPEND_COLUMNS[dim]) for dim in sorted(dims)]
        self._modes: dict[str, _Mode] = {}
        self._concentrated: dict[str, set[tuple[str, str]]] = {}
        """Per data mode, the tenant whose concentration incident is open."""

    def observe(self, rows: Iterable[c.Row]) -> None:
        columns = self._columns
        for row in rows:
            cost = row[c.COST_USD]
            if not cost:
                continue
            at = row[c.TS].timestamp()
            mode = self._mode(row[c.DATA_MODE], at)
            mode.series.setdefault(("all", "all"), _Series()).add(at, cost)
            for dim, index in columns:
                key = row[index]
                if key:
                    series = mode.series.get((dim, key))
                    if series is None:
                        series = mode.series[(dim, key)] = _Series()
                    series.add(at, cost)
                    mode.touched.add((dim, key))

    def warm(
        self, data_mode: str, dimension: str, key: str, at: float, usd: float, *, minute: bool, hour: bool = True
    ) -> None:
        """Add stored spend: of the hour or minute starting at ``at`` to the hourly and/or minute store."""
        mode = self._mode(data_mode, at)
        series = mode.series.setdefault((dimension, key), _Series())
        if hour:
            series.hours[int(at // HOUR)] = series.hours.get(int(at // HOUR), 0.0) + usd
        if minute:
            series.minutes[int(at // 60)] = series.minutes.get(int(at // 60), 0.0) + usd
        if dimension != "all":
            mode.touched.add((dimension, key))

    def check(self, data_mode: str, now: float) -> list[Finding]:
        mode = self._modes.get(data_mode)
        if mode is None:
            return []
        findings: list[Finding] = []
        keep: set[tuple[str, str]] = set()
        for dim, key in mode.touched:
            series = mode.series.get((dim, key))
            if series is None:
                continue
            series.prune(now)
            for finding in (self._spike_of(data_mode, mode, dim, key, series, now),
                            self._burn_of(data_mode, mode, dim, key, series, now)):  # fmt: skip
                if finding is not None:
                    findings.append(finding)
                    if finding.watched:
                        keep.add((dim, key))
        unattributed = self._unattributed_of(data_mode, mode, now)
        if unattributed is not None:
            findings.append(unattributed)
            if unattributed.watched:
                keep.add(("feature", UNATTRIBUTED))
        if self._open_tenants(data_mode) or any(dim == "tenant_id" for dim, _ in mode.touched):
            findings.extend(self._concentration_of(data_mode, mode, now))
        mode.touched = keep
        self._forget_idle(mode, now)
        return findings

    # -- the detectors -----------------------------------------------------------------------------

    def _spike_of(self, data_mode: str, mode: _Mode, dim: str, key: str, series: _Series, now: float) -> Finding | None:
        cfg = self._spike
        if not cfg.enabled or dim not in cfg.dimensions:
            return None
        now_hour = int(now // HOUR)
        window_start = now_hour - DAY_HOURS + 1
        days = _covered_hours(mode, window_start) / DAY_HOURS
        if days < cfg.min_baseline_days:
            return None
        trailing = series.between(window_start, now_hour)
        daily = series.between(window_start - WEEK_HOURS, window_start - 1) / min(days, 7.0)
        threshold = cfg.factor * daily
        firing = trailing > threshold and trailing - daily >= cfg.min_excess_usd
        sustained = trailing > RELAXED * threshold and trailing - daily >= RELAXED * cfg.min_excess_usd
        severity = severity_of(firing, trailing > cfg.critical_factor * daily)
        ratio = f"{trailing / daily:.1f}x" if daily > 0 else "new spend:"
        return Finding(
            kind="spend_spike", data_mode=data_mode, dimension=dim, key=key, severity=severity, sustained=sustained,
            value=round(trailing, 4), baseline=round(daily, 4), threshold=round(threshold, 4), window="24h",
            message=(
                f"{dim} {key} spent ${trailing:,.2f} in the last 24 hours, {ratio} its daily average of "
                f"${daily:,.2f} over the {min(days, 7.0):.0f} days before (alerts above {cfg.factor:g}x "
                f"and ${cfg.min_excess_usd:g} over normal)."
            ),
            query=_hourly_query(dim, key, data_mode, now, 2), at=now,
        )  # fmt: skip

    def _burn_of(self, data_mode: str, mode: _Mode, dim: str, key: str, series: _Series, now: float) -> Finding | None:
        cfg = self._burn
        if not cfg.enabled or dim not in cfg.dimensions:
            return None
        now_hour = int(now // HOUR)
        hours = min(_covered_hours(mode, now_hour), WEEK_HOURS)
        if hours / DAY_HOURS < cfg.min_baseline_days:
            return None
        last_hour = series.last_minutes(now, 60)
        # the rolling hourly average, or this hour's average on the days before when higher: an
        # ordinary afternoon peak is not a burn
        average = series.between(now_hour - WEEK_HOURS, now_hour - 1) / hours
        days = max(1, hours // DAY_HOURS)
        same_hour = sum(series.hours.get(now_hour - DAY_HOURS * d, 0.0) for d in range(1, days + 1)) / days
        hourly = max(average, same_hour)
        threshold = cfg.factor * hourly
        firing = last_hour > threshold and last_hour - hourly >= cfg.min_excess_usd
        sustained = last_hour > RELAXED * threshold and last_hour - hourly >= RELAXED * cfg.min_excess_usd
        severity = severity_of(firing, last_hour > cfg.critical_factor * hourly)
        ratio = f"{last_hour / hourly:.1f}x" if hourly > 0 else "new spend:"
        return Finding(
            kind="hourly_burn", data_mode=data_mode, dimension=dim, key=key, severity=severity, sustained=sustained,
            value=round(last_hour, 4), baseline=round(hourly, 4), threshold=round(threshold, 4), window="1h",
            message=(
                f"{dim} {key} spent ${last_hour:,.2f} in the last hour, {ratio} its hourly average of "
                f"${hourly:,.2f} (last {hours / DAY_HOURS:.0f} days, or this hour of day when higher; "
                f"alerts above {cfg.factor:g}x "
                f"and ${cfg.min_excess_usd:g} over normal)."
            ),
            query=_minute_query(dim, key, data_mode, now),
            at=now,
        )  # fmt: skip

    def _unattributed_of(self, data_mode: str, mode: _Mode, now: float) -> Finding | None:
        cfg = self._unattributed
        if not cfg.enabled or ("feature", UNATTRIBUTED) not in mode.touched:
            return None
        now_hour = int(now // HOUR)
        start = now_hour - DAY_HOURS + 1
        total = mode.series[("all", "all")].between(start, now_hour) if ("all", "all") in mode.series else 0.0
        series = mode.series.get(("feature", UNATTRIBUTED))
        spent = series.between(start, now_hour) if series is not None else 0.0
        share = spent / total if total > 0 else 0.0
        firing = share > cfg.max_share and spent >= cfg.min_usd
        sustained = share > RELAXED * cfg.max_share and spent >= RELAXED * cfg.min_usd
        return Finding(
            kind="unattributed_spend", data_mode=data_mode, dimension="feature", key=UNATTRIBUTED,
            severity="warning" if firing else None, sustained=sustained, value=round(share, 4), baseline=None,
            threshold=cfg.max_share, window="24h",
            message=(
                f"{share:.0%} of the last 24 hours' spend (${spent:,.2f} of ${total:,.2f}) has no feature tag "
                f"(alerts above {cfg.max_share:.0%}). Set `feature` on these calls so their cost has an owner: "
                "the query lists the models, agents and services sending them."
            ),
            query=(
                "SELECT model, agent_id, tenant_id, count() AS calls, round(sum(cost_usd), 4) AS usd "
                f"FROM llm_calls WHERE feature = 'unattributed' AND data_mode = {sql_string(data_mode)} "
                f"AND ts BETWEEN {until(now)} - INTERVAL 1 DAY AND {until(now)} "
                "GROUP BY model, agent_id, tenant_id ORDER BY usd DESC LIMIT 20"
            ),
            at=now,
        )  # fmt: skip

    def _concentration_of(self, data_mode: str, mode: _Mode, now: float) -> list[Finding]:
        cfg = self._concentration
        if not cfg.enabled:
            return []
        now_hour = int(now // HOUR)
        start = now_hour - DAY_HOURS + 1
        if _covered_hours(mode, start) / DAY_HOURS < self._spike.min_baseline_days:
            return []
        recent: dict[str, float] = {}
        before: dict[str, float] = {}
        for (dim, key), series in mode.series.items():
            if dim == "tenant_id":
                recent[key] = series.between(start, now_hour)
                before[key] = series.between(start - WEEK_HOURS, start - 1)
        total, total_before = sum(recent.values()), sum(before.values())
        if not recent or total <= 0:
            return []
        top = max(recent, key=lambda k: recent[k])
        share = recent[top] / total
        usual = before[top] / total_before if total_before > 0 else 0.0
        firing = share >= cfg.min_share and share - usual >= cfg.jump and total >= cfg.min_usd
        sustained = share >= RELAXED * cfg.min_share and share - usual >= RELAXED * cfg.jump
        findings = [
            Finding(
                kind="tenant_concentration", data_mode=data_mode, dimension="tenant_id", key=top,
                severity="warning" if firing else None, sustained=sustained, value=round(share, 4),
                baseline=round(usual, 4),
                threshold=round(max(cfg.min_share, usual + cfg.jump), 4), window="24h",
                message=(
                    f"tenant {top} made {share:.0%} of the last 24 hours' spend (${recent[top]:,.2f} of "
                    f"${total:,.2f}), up from {usual:.0%} over the 7 days before."
                ),
                query=_hourly_query("tenant_id", top, data_mode, now, 8), at=now,
            )
        ]  # fmt: skip
        # a tenant no longer on top resolves its incident
        for tenant in self._open_tenants(data_mode) - {("tenant_id", top)}:
            findings.append(
                Finding(
                    kind="tenant_concentration", data_mode=data_mode, dimension="tenant_id", key=tenant[1],
                    severity=None, value=round(recent.get(tenant[1], 0.0) / total, 4), baseline=None,
                    threshold=None, window="24h",
                    message=f"tenant {tenant[1]} is no longer the top spender of the last 24 hours.",
                    query=_hourly_query("tenant_id", tenant[1], data_mode, now, 8), at=now,
                )
            )  # fmt: skip
        self._concentrated[data_mode] = {("tenant_id", top)} if firing else set()
        return findings

    # -- bookkeeping -------------------------------------------------------------------------------

    def _open_tenants(self, data_mode: str) -> set[tuple[str, str]]:
        return self._concentrated.setdefault(data_mode, set())

    def _mode(self, data_mode: str, at: float) -> _Mode:
        mode = self._modes.get(data_mode)
        if mode is None:
            mode = self._modes[data_mode] = _Mode()
        hour = int(at // HOUR)
        if mode.first_hour is None or hour < mode.first_hour:
            mode.first_hour = hour
        return mode

    @staticmethod
    def _forget_idle(mode: _Mode, now: float) -> None:
        """Once an hour of event time, drop keys without spend in the kept eight days."""
        hour = int(now // HOUR)
        if hour <= mode.pruned_hour:
            return
        mode.pruned_hour = hour
        for series_key in [k for k, s in mode.series.items() if not s.hours or max(s.hours) < hour - _KEEP_HOURS]:
            del mode.series[series_key]


def _covered_hours(mode: _Mode, until_hour: int) -> int:
    """Whole hours of data this mode has before ``until_hour``."""
    return 0 if mode.first_hour is None else max(0, until_hour - mode.first_hour)


def _hourly_query(dimension: str, key: str, data_mode: str, now: float, days: int) -> str:
    return (
        "SELECT bucket, round(sum(cost_usd), 4) AS usd, sum(calls) AS calls FROM rollup_hour "
        f"WHERE dimension = {sql_string(dimension)} AND key = {sql_string(key)} "
        f"AND data_mode = {sql_string(data_mode)} "
        f"AND bucket BETWEEN {until(now)} - INTERVAL {days} DAY AND {until(now)} GROUP BY bucket ORDER BY bucket"
    )


def _minute_query(dimension: str, key: str, data_mode: str, now: float) -> str:
    return (
        "SELECT bucket, round(sum(cost_usd), 4) AS usd, sum(calls) AS calls FROM rollup_minute "
        f"WHERE dimension = {sql_string(dimension)} AND key = {sql_string(key)} "
        f"AND data_mode = {sql_string(data_mode)} "
        f"AND bucket BETWEEN {until(now)} - INTERVAL 2 HOUR AND {until(now)} GROUP BY bucket ORDER BY bucket"
    )
