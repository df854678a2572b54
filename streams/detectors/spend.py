"""Spend detectors: ``spend_spike``, ``hourly_burn``, ``unattributed_spend`` and ``tenant_concentration``.

They share one store: per data mode, dimension and key, spend by event-time hour (the last eight
days) and by minute (the last hour). Baselines count only the days the detector has seen data of
that data mode (warm-up from the rollups included), so nothing fires on an empty baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import pyarrow as pa
import pyarrow.compute as pc

from schemas.alert import Severity
from schemas.config import HourlyBurnConfig, SpendSpikeConfig, TenantConcentrationConfig, UnattributedConfig
from sinks.clickhouse import sql_string
from streams.detectors import calls as c
from streams.detectors.findings import RELAXED, Finding, severity_of, until
from streams.detectors.watchlist import Watchlist

HOUR = 3600
DAY_HOURS = 24
WEEK_HOURS = 7 * DAY_HOURS
_KEEP_HOURS = WEEK_HOURS + DAY_HOURS + 1
SPEND_DIMENSIONS = ("feature", "model", "provider", "agent_id", "tenant_id", "team", "user_id", "environment")
"""The dimensions spend is kept by (each an ``llm_calls`` column), besides ``all``."""
UNATTRIBUTED = "unattributed"


@dataclass(slots=True)
class _Closed:
    """Sums of whole hours before the current one, for one series at one current hour."""

    day: float
    """The 23 hours before the current one (with it: the last 24 hours)."""
    week_before_day: float
    """The 7 days before those 24 hours: the spike's baseline."""
    week: float
    """The 7 days before the current hour: the burn's rolling average."""
    same_hour: list[float]
    """``same_hour[d - 1]``: this hour of day, summed over the ``d`` days before."""


@dataclass(slots=True)
class _Series:
    hours: dict[int, float] = field(default_factory=dict)
    """Spend by hour number (epoch seconds // 3600)."""
    minutes: dict[int, float] = field(default_factory=dict)
    """Spend by minute number, the last 60 minutes."""
    _closed: _Closed | None = None
    _closed_hour: int = -1

    def add(self, at: float, usd: float, *, hour: bool = True, minute: bool = True) -> None:
        number = int(at // HOUR)
        if hour:
            self.hours[number] = self.hours.get(number, 0.0) + usd
            if number < self._closed_hour:  # a late call changed a closed hour
                self._closed = None
        if minute:
            number = int(at // 60)
            self.minutes[number] = self.minutes.get(number, 0.0) + usd

    def closed(self, now_hour: int) -> _Closed:
        """The sums of closed hours, computed once per hour (again only if a late call lands in them)."""
        if self._closed is None or self._closed_hour != now_hour:
            self._prune(now_hour)
            self._closed = _Closed(
                day=self._between(now_hour - DAY_HOURS + 1, now_hour - 1),
                week_before_day=self._between(now_hour - DAY_HOURS + 1 - WEEK_HOURS, now_hour - DAY_HOURS),
                week=self._between(now_hour - WEEK_HOURS, now_hour - 1),
                same_hour=list(
                    accumulate(self.hours.get(now_hour - DAY_HOURS * d, 0.0) for d in range(1, WEEK_HOURS // 24 + 1))
                ),
            )
            self._closed_hour = now_hour
        return self._closed

    def last_day(self, now_hour: int) -> float:
        """Spend of the last 24 hours: the current hour and the 23 before."""
        return self.closed(now_hour).day + self.hours.get(now_hour, 0.0)

    def last_minutes(self, now: float, minutes: int) -> float:
        """Spend of the ``minutes`` minutes up to ``now`` (calls of later minutes, read early, wait)."""
        end = int(now // 60)
        if self.minutes and min(self.minutes) <= end - 60:
            self.minutes = {m: u for m, u in self.minutes.items() if m > end - 60}
        return sum(usd for minute, usd in self.minutes.items() if end - minutes < minute <= end)

    def _between(self, first_hour: int, last_hour: int) -> float:
        return sum(usd for hour, usd in self.hours.items() if first_hour <= hour <= last_hour)

    def _prune(self, now_hour: int) -> None:
        oldest = now_hour - _KEEP_HOURS
        if self.hours and min(self.hours) < oldest:
            self.hours = {h: u for h, u in self.hours.items() if h >= oldest}


@dataclass(slots=True)
class _Mode:
    first_hour: int | None = None
    series: dict[str, dict[str, _Series]] = field(default_factory=dict)
    """Per dimension, per key (``all``/``all``: every call)."""
    due: Watchlist[tuple[str, str]] = field(default_factory=Watchlist)
    pruned_hour: int = 0

    def of(self, dimension: str, key: str) -> _Series:
        keys = self.series.get(dimension)
        if keys is None:
            keys = self.series[dimension] = {}
        found = keys.get(key)
        if found is None:
            found = keys[key] = _Series()
        return found


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
        self._dimensions = sorted(dims)
        self._modes: dict[str, _Mode] = {}
        self._concentrated: dict[str, str] = {}
        """Per data mode, the tenant whose concentration incident is open."""

    def prepare(self, calls: pa.Table) -> dict[int, list[c.Row]]:
        """Per minute of calls (``calls.in_time_order``): the spend per data mode and combination of keys."""
        spent = calls.filter(pc.greater(calls.column("cost_usd"), 0.0))  # a null cost is left out too
        return c.per_minute(spent, ["data_mode", *self._dimensions], [("cost_usd", "sum")])

    def observe(self, minute: int, spend: list[c.Row]) -> None:
        """Add one event-time minute's spend (from :meth:`prepare`), per key of each dimension."""
        # a minute of traffic repeats combinations of keys: they are summed first, then per key
        sums: dict[tuple[str, str, str], float] = {}
        get = sums.get
        dimensions = self._dimensions
        for data_mode, *keys, cost in spend:
            cell = (data_mode, "all", "all")
            sums[cell] = get(cell, 0.0) + cost
            for dim, key in zip(dimensions, keys, strict=True):
                if key:
                    cell = (data_mode, dim, key)
                    sums[cell] = get(cell, 0.0) + cost
        at = minute * 60.0
        for (data_mode, dimension, name), usd in sums.items():
            self.add(data_mode, dimension, name, at, usd, minute=True)

    def add(
        self, data_mode: str, dimension: str, key: str, at: float, usd: float, *, minute: bool, hour: bool = True
    ) -> None:
        """Add spend: of calls, or from the rollups (an hour or a minute starting at ``at``, to either store)."""
        mode = self._mode(data_mode, at)
        mode.of(dimension, key).add(at, usd, hour=hour, minute=minute)
        if dimension != "all":
            mode.due.touch((dimension, key))

    def check(self, data_mode: str, now: float) -> list[Finding]:
        mode = self._modes.get(data_mode)
        if mode is None:
            return []
        findings: list[Finding] = []
        due = mode.due.due()
        for dim, key in due:
            series = mode.series.get(dim, {}).get(key)
            if series is None:
                continue
            watched = mode.due.is_watched((dim, key))
            for finding in (self._spike_of(data_mode, mode, dim, key, series, now, watched),
                            self._burn_of(data_mode, mode, dim, key, series, now, watched)):  # fmt: skip
                if finding is not None:
                    findings.append(finding)
                    if finding.watched:
                        mode.due.watch((dim, key))
        if ("feature", UNATTRIBUTED) in due:
            unattributed = self._unattributed_of(data_mode, mode, now)
            if unattributed is not None:
                findings.append(unattributed)
                if unattributed.watched:
                    mode.due.watch(("feature", UNATTRIBUTED))
        if data_mode in self._concentrated or any(dim == "tenant_id" for dim, _ in due):
            findings.extend(self._concentration_of(data_mode, mode, now))
        self._forget_idle(mode, now)
        return findings

    # -- the detectors -----------------------------------------------------------------------------

    def _spike_of(
        self, data_mode: str, mode: _Mode, dim: str, key: str, series: _Series, now: float, watched: bool
    ) -> Finding | None:
        cfg = self._spike
        if not cfg.enabled or dim not in cfg.dimensions:
            return None
        now_hour = int(now // HOUR)
        days = _covered_hours(mode, now_hour - DAY_HOURS + 1) / DAY_HOURS
        if days < cfg.min_baseline_days:
            return None
        trailing = series.last_day(now_hour)
        daily = series.closed(now_hour).week_before_day / min(days, 7.0)
        severity, sustained = _above(trailing, daily, cfg.factor, cfg.critical_factor, cfg.min_excess_usd)
        if severity is None and not sustained and not watched:
            return None  # quiet, and no incident to resolve: nothing to say
        ratio = f"{trailing / daily:.1f}x" if daily > 0 else "new spend:"
        return Finding(
            kind="spend_spike", data_mode=data_mode, dimension=dim, key=key, severity=severity, sustained=sustained,
            value=round(trailing, 4), baseline=round(daily, 4), threshold=round(cfg.factor * daily, 4), window="24h",
            message=(
                f"{dim} {key} spent ${trailing:,.2f} in the last 24 hours, {ratio} its daily average of "
                f"${daily:,.2f} over the {min(days, 7.0):.0f} days before (alerts above {cfg.factor:g}x "
                f"and ${cfg.min_excess_usd:g} over normal)."
            ),
            query=hourly_query(dim, key, data_mode, now, 2), at=now,
        )  # fmt: skip

    def _burn_of(
        self, data_mode: str, mode: _Mode, dim: str, key: str, series: _Series, now: float, watched: bool
    ) -> Finding | None:
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
        closed = series.closed(now_hour)
        days = max(1, hours // DAY_HOURS)
        hourly = max(closed.week / hours, closed.same_hour[days - 1] / days)
        severity, sustained = _above(last_hour, hourly, cfg.factor, cfg.critical_factor, cfg.min_excess_usd)
        if severity is None and not sustained and not watched:
            return None
        ratio = f"{last_hour / hourly:.1f}x" if hourly > 0 else "new spend:"
        return Finding(
            kind="hourly_burn", data_mode=data_mode, dimension=dim, key=key, severity=severity, sustained=sustained,
            value=round(last_hour, 4), baseline=round(hourly, 4), threshold=round(cfg.factor * hourly, 4),
            window="1h",
            message=(
                f"{dim} {key} spent ${last_hour:,.2f} in the last hour, {ratio} its hourly average of "
                f"${hourly:,.2f} (last {hours / DAY_HOURS:.0f} days, or this hour of day when higher; "
                f"alerts above {cfg.factor:g}x and ${cfg.min_excess_usd:g} over normal)."
            ),
            query=_minute_query(dim, key, data_mode, now),
            at=now,
        )  # fmt: skip

    def _unattributed_of(self, data_mode: str, mode: _Mode, now: float) -> Finding | None:
        cfg = self._unattributed
        if not cfg.enabled:
            return None
        now_hour = int(now // HOUR)
        total = mode.of("all", "all").last_day(now_hour)
        spent = mode.of("feature", UNATTRIBUTED).last_day(now_hour)
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
        # the baseline needs as much history as the spike's does
        if _covered_hours(mode, now_hour - DAY_HOURS + 1) / DAY_HOURS < self._spike.min_baseline_days:
            return []
        tenants = mode.series.get("tenant_id", {})
        recent = {key: series.last_day(now_hour) for key, series in tenants.items()}
        before = {key: series.closed(now_hour).week_before_day for key, series in tenants.items()}
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
                query=hourly_query("tenant_id", top, data_mode, now, 8), at=now,
            )
        ]  # fmt: skip
        # a tenant no longer on top resolves its incident
        was = self._concentrated.pop(data_mode, None)
        if was is not None and was != top:
            findings.append(
                Finding(
                    kind="tenant_concentration", data_mode=data_mode, dimension="tenant_id", key=was,
                    severity=None, value=round(recent.get(was, 0.0) / total, 4), baseline=None,
                    threshold=None, window="24h",
                    message=f"tenant {was} is no longer the top spender of the last 24 hours.",
                    query=hourly_query("tenant_id", was, data_mode, now, 8), at=now,
                )
            )  # fmt: skip
        if firing or (sustained and was == top):
            self._concentrated[data_mode] = top
        return findings

    # -- bookkeeping -------------------------------------------------------------------------------

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
        for keys in mode.series.values():
            for key in [k for k, s in keys.items() if not s.hours or max(s.hours) < hour - _KEEP_HOURS]:
                del keys[key]


def _above(
    value: float, normal: float, factor: float, critical_factor: float, min_excess: float
) -> tuple[Severity | None, bool]:
    """Severity (None: quiet) and whether an open incident holds: ``value`` against ``factor`` times normal."""
    firing = value > factor * normal and value - normal >= min_excess
    sustained = value > RELAXED * factor * normal and value - normal >= RELAXED * min_excess
    return severity_of(firing, value > critical_factor * normal), sustained


def _covered_hours(mode: _Mode, until_hour: int) -> int:
    """Whole hours of data this mode has before ``until_hour``."""
    return 0 if mode.first_hour is None else max(0, until_hour - mode.first_hour)


def hourly_query(dimension: str, key: str, data_mode: str, now: float, days: int) -> str:
    """The drill-down of a spend alert: a key's spend and calls per hour over the ``days`` up to ``now``."""
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
