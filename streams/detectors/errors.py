"""``error_rate``: the share of failed calls (error, timeout, rate limited) per provider, model and feature.

A share from a few calls is noisy: the detector fires when the lower end of the 99.9% confidence
interval of the share (Wilson) passes the threshold, so 3 failures in 20 calls of a service that
usually fails 4% of the time do not page anyone, and 10 in 20 do.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import ErrorRateConfig
from sinks.clickhouse import sql_string
from streams.detectors import calls as c
from streams.detectors.findings import RELAXED, Finding, severity_of, until
from streams.detectors.windows import MinuteWindows, WindowKey

_DIMENSIONS = ("provider", "model", "feature")
FAILED_STATUSES = ("error", "timeout", "rate_limited")
"""The statuses ``error_rate`` counts as failed (inhibition asks ClickHouse the same question)."""
_FAILED = pa.array(FAILED_STATUSES)
_Z = 3.29


def wilson_lower(failures: int, calls: int) -> float:
    """The lower bound of the 99.9% Wilson score interval of ``failures / calls``."""
    if calls == 0:
        return 0.0
    share = failures / calls
    z2 = _Z * _Z
    centre = share + z2 / (2 * calls)
    margin = _Z * math.sqrt(share * (1 - share) / calls + z2 / (4 * calls * calls))
    return max(0.0, (centre - margin) / (1 + z2 / calls))


class ErrorRateDetector:
    def __init__(self, config: ErrorRateConfig) -> None:
        self._config = config
        # per minute: calls, failures, retries
        self._windows: MinuteWindows[list[int]] = MinuteWindows(config.window_minutes, lambda: [0, 0, 0])

    def prepare(self, calls: pa.Table) -> dict[int, list[c.Row]]:
        """Per minute of calls (``calls.in_time_order``): model calls, failures and retries.

        One tuple per (data mode, dimension, key): each provider, model and feature of the minute's calls.
        """
        if not self._config.enabled:
            return {}
        llm = calls.filter(pc.equal(calls.column("kind"), "llm"))
        llm = llm.append_column("failed", pc.is_in(llm.column("status"), value_set=_FAILED))
        llm = llm.append_column("retried", pc.greater(llm.column("attempt"), 1))  # a sum of booleans counts them
        counted = c.per_minute(
            llm, ["data_mode", *_DIMENSIONS], [([], "count_all"), ("failed", "sum"), ("retried", "sum")]
        )
        return {minute: _per_key(rows) for minute, rows in counted.items()}

    def observe(self, minute: int, counts: list[c.Row]) -> None:
        """Count one event-time minute's calls (from :meth:`prepare`) into their windows."""
        for data_mode, dim, name, calls, failures, retries in counts:
            cell = self._windows.cell((data_mode, dim, name), minute)
            cell[0] += calls
            cell[1] += failures
            cell[2] += retries

    def check(self, now_of: dict[str, float]) -> list[Finding]:
        findings = []
        for key, now in self._windows.due(now_of):
            calls = failures = retries = 0
            for cell in self._windows.window(key, now):
                calls += cell[0]
                failures += cell[1]
                retries += cell[2]
            finding = self._finding(key, calls, failures, retries, now)
            if finding is not None:
                findings.append(finding)
                if finding.watched:
                    self._windows.keys.watch(key)
        return findings

    def _finding(self, key: WindowKey, calls: int, failures: int, retries: int, now: float) -> Finding | None:
        cfg = self._config
        data_mode, dim, name = key
        if 0 < calls < cfg.min_calls:
            return None
        share = failures / calls if calls else 0.0
        lower = wilson_lower(failures, calls)
        severity = severity_of(lower > cfg.warning_share, lower > cfg.critical_share)
        sustained = lower > RELAXED * cfg.warning_share
        if severity is None and not sustained and not self._windows.keys.is_watched(key):
            return None  # quiet, and no incident to resolve: nothing to say
        multiplier = calls / (calls - retries) if calls > retries else float(calls or 1)
        window = f"{cfg.window_minutes}m"
        return Finding(
            kind="error_rate", data_mode=data_mode, dimension=dim, key=name, severity=severity,
            value=round(share, 4), baseline=None, threshold=cfg.warning_share, window=window,
            sustained=sustained,
            message=(
                f"{failures} of {calls} calls of {dim} {name} failed in the last {window} ({share:.0%}; "
                f"alerts when surely above {cfg.warning_share:.0%}). Retries make each request cost "
                f"{multiplier:.2f}x ({retries} retried calls)."
            ),
            query=(
                "SELECT toStartOfMinute(ts) AS minute, status, error_type, count() AS calls, "
                f"countIf(attempt > 1) AS retries FROM llm_calls WHERE {dim} = {sql_string(name)} "
                f"AND data_mode = {sql_string(data_mode)} "
                f"AND ts BETWEEN {until(now)} - INTERVAL 30 MINUTE AND {until(now)} GROUP BY ALL ORDER BY minute"
            ),
            at=now,
        )  # fmt: skip


def _per_key(groups: list[c.Row]) -> list[c.Row]:
    """Counts per (data mode, provider, model, feature), summed per key of each dimension."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    for data_mode, *names, calls, failures, retries in groups:
        for dim, name in zip(_DIMENSIONS, names, strict=True):
            cell = sums.get((data_mode, dim, name))
            if cell is None:
                sums[(data_mode, dim, name)] = [calls, failures, retries]
            else:
                cell[0] += calls
                cell[1] += failures
                cell[2] += retries
    return [(*key, *counts) for key, counts in sums.items()]
