"""Spend detectors: ``spend_spike``, ``hourly_burn``, ``unattributed_spend`` and ``tenant_concentration``.

They share one store: per data mode, dimension and key, spend by event-time hour (the last four
weeks and a day), by day (two weeks) and by minute (the last hour). ``spend_spike`` and
``hourly_burn`` compare a key with its own normal for those hours of the week, with its trend
(:mod:`streams.detectors.baseline`): a weekend is not a spike on Monday morning, a job that runs
every night is normal at night, a burn at 3 a.m. is measured against 3 a.m. A key pages only once
it has ``min_baseline_days`` of its own history (warm-up from the rollups included), or
``new_key_days`` when it appeared after the history began: a launched feature, an onboarded tenant
or a new user first has to show what its normal is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from schemas.alert import Severity
from schemas.config import HourlyBurnConfig, SpendSpikeConfig, TenantConcentrationConfig, UnattributedConfig
from sinks.clickhouse import sql_string
from streams.detectors import baseline
from streams.detectors import calls as c
from streams.detectors.baseline import DAY_HOURS, KEEP_HOURS, WEEK_HOURS
from streams.detectors.findings import RELAXED, Finding, severity_of, until
from streams.detectors.watchlist import Watchlist

HOUR = 3600
SPEND_DIMENSIONS = ("feature", "model", "provider", "agent_id", "tenant_id", "team", "user_id", "environment")
"""The dimensions spend is kept by (each an ``llm_calls`` column), besides ``all``."""
UNATTRIBUTED = "unattributed"
_TREND_DAYS = 15
"""Days of daily spend a key keeps for its trend."""


@dataclass(slots=True)
class _Series:
    """One key's spend: by hour (for its seasonal normal), by day (for its trend) and by minute (the last hour)."""

    hours: dict[int, float] = field(default_factory=dict)
    """Spend by hour number (epoch seconds // 3600), the last ``baseline.KEEP_HOURS``."""
    days: dict[int, float] = field(default_factory=dict)
    """Spend by day number (epoch hours // 24), the last two weeks."""
    minutes: dict[int, float] = field(default_factory=dict)
    """Spend by minute number, the last 60 minutes."""
    first_hour: int | None = None
    """The first hour the key spent in (from the warm-up's history on): how much history it has."""
    last_hour: int = -1
    _normals: dict[int, tuple[float, float]] = field(default_factory=dict)
    """The normal and the highest comparable spend of the hours the burn was judged in (``baseline.normal_hour``)."""
    _trend: tuple[int, float] = (-1, 1.0)
    """(day, the weekly trend as of that day)"""
    _hour: int = -1
    """The current hour of the sums below; they are computed once per hour (again after a late call)."""
    _day: float | None = None
    _normal_day: float | None = None
    _normal_hour: tuple[float, float] | None = None
    _week_before_day: float | None = None
    _pruned_day: int = -1

    def add(self, at: float, usd: float, *, hour: bool = True, minute: bool = True) -> None:
        number = int(at // HOUR)
        if hour:
            self.hours[number] = self.hours.get(number, 0.0) + usd
            day = number // DAY_HOURS
            self.days[day] = self.days.get(day, 0.0) + usd
            if self.first_hour is None or number < self.first_hour:
                self.first_hour = number
            self.last_hour = max(self.last_hour, number)
            if number < self._hour:  # a late call changed a closed hour
                self._hour = -1
                self._normals.clear()
        if minute:
            number = int(at // 60)
            self.minutes[number] = self.minutes.get(number, 0.0) + usd

    def history_days(self, now_hour: int) -> float:
        """Days since the key first spent."""
        return 0.0 if self.first_hour is None else (now_hour - self.first_hour) / DAY_HOURS

    def last_day(self, now_hour: int) -> float:
        """Spend of the last 24 hours: the current hour and the 23 before."""
        self._at(now_hour)
        if self._day is None:
            self._day = self._between(now_hour - DAY_HOURS + 1, now_hour - 1)
        return self._day + self.hours.get(now_hour, 0.0)

    def last_two_hours(self, now_hour: int) -> float:
        """Spend of the current hour and the one before: at least that of the last 60 minutes."""
        return self.hours.get(now_hour, 0.0) + self.hours.get(now_hour - 1, 0.0)

    def last_minutes(self, now: float, minutes: int) -> float:
        """Spend of the ``minutes`` minutes up to ``now`` (calls of later minutes, read early, wait)."""
        end = int(now // 60)
        if self.minutes and min(self.minutes) <= end - 60:
            self.minutes = {m: u for m, u in self.minutes.items() if m > end - 60}
        return sum(usd for minute, usd in self.minutes.items() if end - minutes < minute <= end)

    def week_before_day(self, now_hour: int) -> float:
        """Spend of the 7 days before the last 24 hours (``tenant_concentration``'s shares)."""
        self._at(now_hour)
        if self._week_before_day is None:
            self._week_before_day = self._between(now_hour - DAY_HOURS + 1 - WEEK_HOURS, now_hour - DAY_HOURS)
        return self._week_before_day

    def normal_day(self, now_hour: int) -> float:
        """The normal spend of the last 24 hours (the current hour in full: see ``baseline.normal_day``)."""
        self._at(now_hour)
        if self._normal_day is None:
            self._normal_day = (
                baseline.normal_day(
                    self.hours, range(now_hour - DAY_HOURS + 1, now_hour + 1), self.first_hour, self.trend(now_hour)
                )
                if self.first_hour is not None
                else 0.0
            )
        return self._normal_day

    def normal_hour(self, now_hour: int) -> tuple[float, float]:
        """The normal spend of the last 60 minutes, and the most spent in an hour like them: of the two hours
        they touch, the higher (a job that starts a few minutes early or late is still normal)."""
        self._at(now_hour)
        if self._normal_hour is None:
            (before, high_before), (now, high_now) = self._slot(now_hour - 1, now_hour), self._slot(now_hour, now_hour)
            self._normal_hour = (max(before, now), max(high_before, high_now))
        return self._normal_hour

    def _slot(self, slot: int, now_hour: int) -> tuple[float, float]:
        found = self._normals.get(slot)
        if found is None:
            found = self._normals[slot] = (
                baseline.normal_hour(self.hours, slot, self.first_hour, self.trend(now_hour))
                if self.first_hour is not None
                else (0.0, 0.0)
            )
        return found

    def trend(self, now_hour: int) -> float:
        """The key's growth per week (``baseline.weekly_trend``), once a day."""
        today = now_hour // DAY_HOURS
        if self._trend[0] != today:
            first_day = today if self.first_hour is None else self.first_hour // DAY_HOURS
            self._trend = (today, baseline.weekly_trend(self.days, today, first_day))
        return self._trend[1]

    def _at(self, now_hour: int) -> None:
        """Start the current hour's sums afresh when the hour changed (or a late call landed)."""
        if self._hour == now_hour:
            return
        self._hour = now_hour
        self._day = self._normal_day = self._normal_hour = self._week_before_day = None
        if now_hour // DAY_HOURS != self._pruned_day:  # once a day: forget what no baseline reads
            self._pruned_day = now_hour // DAY_HOURS
            oldest = now_hour - KEEP_HOURS
            self.hours = {h: u for h, u in self.hours.items() if h >= oldest}
            self.days = {d: u for d, u in self.days.items() if d >= self._pruned_day - _TREND_DAYS}
            self._normals = {s: n for s, n in self._normals.items() if s > now_hour - DAY_HOURS}

    def _between(self, first_hour: int, last_hour: int) -> float:
        hours = self.hours
        return sum(hours.get(hour, 0.0) for hour in range(first_hour, last_hour + 1))


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
        """Per minute of calls (``calls.in_time_order``): the spend per (data mode, dimension, key).

        ``all``/``all`` is the spend of every call. These are the partials that go to each key's owner.
        """
        spent = calls.filter(pc.greater(calls.column("cost_usd"), 0.0))  # a null cost is left out too
        combinations = c.per_minute(spent, ["data_mode", *self._dimensions], [("cost_usd", "sum")])
        return {minute: self._per_key(rows) for minute, rows in combinations.items()}

    def _per_key(self, spend: list[c.Row]) -> list[c.Row]:
        """One minute's spend per combination of keys, summed per key of each dimension."""
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
        return [(*cell, usd) for cell, usd in sums.items()]

    def observe(self, minute: int, spend: list[c.Row]) -> None:
        """Add one event-time minute's spend per key (from :meth:`prepare`)."""
        at = minute * 60.0
        for data_mode, dimension, name, usd in spend:
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
        trailing = series.last_day(now_hour)
        if not watched and (trailing < RELAXED * cfg.min_excess_usd or _too_new(mode, series, now_hour, cfg)):
            return None  # too little to matter, or too new to judge: the cheap answers first
        normal = series.normal_day(now_hour)
        severity, sustained = _above(trailing, normal, cfg.factor, cfg.critical_factor, cfg.min_excess_usd)
        if severity is None and not sustained and not watched:
            return None  # quiet, and no incident to resolve: nothing to say
        ratio = f"{trailing / normal:.1f}x" if normal > 0 else "new spend:"
        _, basis = baseline.comparable(now_hour, series.first_hour if series.first_hour is not None else now_hour)
        return Finding(
            kind="spend_spike", data_mode=data_mode, dimension=dim, key=key, severity=severity, sustained=sustained,
            value=round(trailing, 4), baseline=round(normal, 4), threshold=round(cfg.factor * normal, 4), window="24h",
            message=(
                f"{dim} {key} spent ${trailing:,.2f} in the last 24 hours, {ratio} its normal ${normal:,.2f} for "
                f"these hours ({_basis(basis, hour=False)}): ${trailing - normal:,.2f} over normal, "
                f"${(trailing - normal) / 24:,.2f} an hour (alerts above {cfg.factor:g}x and ${cfg.min_excess_usd:g} "
                "over normal)."
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
        if not watched and (
            series.last_two_hours(now_hour) < RELAXED * cfg.min_excess_usd or _too_new(mode, series, now_hour, cfg)
        ):
            return None  # too little to matter, or too new to judge: the cheap answers first
        last_hour = series.last_minutes(now, 60)
        normal, high = series.normal_hour(now_hour)
        # the dollars must pass what the key has spent in an hour like this one, not only its normal: a
        # feature of a few agent sessions an hour swings from nothing to twice its normal on its own
        severity, sustained = _above(last_hour, normal, cfg.factor, cfg.critical_factor, cfg.min_excess_usd, high)
        if severity is None and not sustained and not watched:
            return None
        ratio = f"{last_hour / normal:.1f}x" if normal > 0 else "new spend:"
        _, basis = baseline.comparable(now_hour, series.first_hour if series.first_hour is not None else now_hour)
        return Finding(
            kind="hourly_burn", data_mode=data_mode, dimension=dim, key=key, severity=severity, sustained=sustained,
            value=round(last_hour, 4), baseline=round(normal, 4), threshold=round(cfg.factor * normal, 4),
            window="1h",
            message=(
                f"{dim} {key} spent ${last_hour:,.2f} in the last hour, {ratio} its normal ${normal:,.2f} for this "
                f"hour ({_basis(basis, hour=True)}; at most ${high:,.2f} in an hour like it): "
                f"${last_hour - normal:,.2f} an hour over normal (alerts above {cfg.factor:g}x, and "
                f"${cfg.min_excess_usd:g} over the most)."
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
        before = {key: series.week_before_day(now_hour) for key, series in tenants.items()}
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
        """Once an hour of event time, drop keys without spend in the kept four weeks (back, one is new again)."""
        hour = int(now // HOUR)
        if hour <= mode.pruned_hour:
            return
        mode.pruned_hour = hour
        for keys in mode.series.values():
            for key in [k for k, s in keys.items() if s.last_hour < hour - KEEP_HOURS]:
                del keys[key]


def _above(
    value: float, normal: float, factor: float, critical_factor: float, min_excess: float, high: float | None = None
) -> tuple[Severity | None, bool]:
    """Severity (None: quiet) and whether an open incident holds: ``value`` against ``factor`` times normal,
    and ``min_excess`` dollars over normal (over ``high``, when given)."""
    floor = normal if high is None else max(normal, high)
    firing = value > factor * normal and value - floor >= min_excess
    sustained = value > RELAXED * factor * normal and value - floor >= RELAXED * min_excess
    return severity_of(firing, value > critical_factor * normal), sustained


def _basis(how: str, hour: bool) -> str:
    """How a normal was taken (``baseline.comparable``), in words."""
    days, _, week = how.partition("+")
    of_week = f" and in each of the last {baseline.WEEKS} weeks" if week else ""
    if not hour:
        return f"the upper quartile of these 24 hours on comparable days{of_week}, with its trend"
    latest = "on the last seven days" if days == "days" else f"on the latest {days}"
    return f"the upper quartile of this hour {latest}{of_week}, with its trend"


def _too_new(mode: _Mode, series: _Series, now_hour: int, cfg: SpendSpikeConfig | HourlyBurnConfig) -> bool:
    """Whether a key has too little history of its own to page: ``min_baseline_days``, or ``new_key_days``
    for a key first seen after the first day of the history (a launched feature, an onboarded tenant, a
    new user: its first days ramp up, and a week holds a weekend)."""
    if series.first_hour is None or mode.first_hour is None:
        return True
    born = series.first_hour > mode.first_hour + DAY_HOURS
    return series.history_days(now_hour) < (cfg.new_key_days if born else cfg.min_baseline_days)


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
