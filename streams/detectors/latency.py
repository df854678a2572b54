"""``latency_p95``: p95 latency and time to first token per feature and per model, over a sliding window.

Successful model calls count; a failed call's latency is a timeout or an early error (``error_rate``).

Latencies are counted in log-spaced buckets (each 10% wide), so a window of any traffic costs a
few hundred integers and its p95 is known within 5%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from schemas.config import LatencyConfig
from sinks.clickhouse import sql_string
from streams.detectors import calls as c
from streams.detectors.findings import RELAXED, Finding, severity_of, until
from streams.detectors.windows import MinuteWindows, WindowKey

_GROWTH = 1.1
_LOG_GROWTH = math.log(_GROWTH)
_METRICS = ("latency", "ttft")

Histogram = dict[int, int]
"""Calls per bucket: bucket ``b`` holds latencies in [1.1**b, 1.1**(b+1)) milliseconds."""


def quantile(histogram: Histogram, q: float) -> tuple[float, int]:
    """The ``q`` quantile (the bucket's geometric middle) and the number of values."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0, 0
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return _GROWTH ** (bucket + 0.5), total
    return _GROWTH ** (max(histogram) + 0.5), total


class LatencyDetector:
    def __init__(self, config: LatencyConfig) -> None:
        self._config = config
        self._windows: MinuteWindows[dict[str, Histogram]] = MinuteWindows(
            config.window_minutes, lambda: {"latency": {}, "ttft": {}}
        )

    def observe(self, rows: Sequence[c.Row], stamps: Sequence[float]) -> None:
        """Count calls of one event-time minute (see ``calls.minute_slices``) into their windows."""
        if not self._config.enabled or not rows:
            return
        # counted per (data mode, feature, model) first: a minute of traffic has few of them
        counts: dict[tuple[str, str, str], tuple[Histogram, Histogram]] = {}
        log = math.log
        for row in rows:
            if row[c.KIND] != "llm" or row[c.STATUS] != "success":
                continue  # a failed call's latency is a client timeout or an early error: error_rate has them
            key = (row[c.DATA_MODE], row[c.FEATURE], row[c.MODEL])
            histograms = counts.get(key)
            if histograms is None:
                histograms = counts[key] = ({}, {})
            # the bucket of each time (see Histogram), written out twice: this loop runs once per call
            ms = row[c.LATENCY_MS]
            if ms is not None:
                b = int(log(ms) / _LOG_GROWTH) if ms >= 1 else 0
                histogram = histograms[0]
                histogram[b] = histogram.get(b, 0) + 1
            ms = row[c.TTFT_MS]
            if ms is not None:
                b = int(log(ms) / _LOG_GROWTH) if ms >= 1 else 0
                histogram = histograms[1]
                histogram[b] = histogram.get(b, 0) + 1
        minute = c.minute_of(stamps)
        for (data_mode, feature, model), (latency, ttft) in counts.items():
            for key in ((data_mode, "feature", feature), (data_mode, "model", model)):
                cell = self._windows.cell(key, minute)
                for metric, histogram in zip(_METRICS, (latency, ttft), strict=True):
                    into = cell[metric]
                    for b, n in histogram.items():
                        into[b] = into.get(b, 0) + n

    def check(self, now_of: dict[str, float]) -> list[Finding]:
        findings = []
        for key, now in self._windows.due(now_of):
            merged: dict[str, Histogram] = {"latency": {}, "ttft": {}}
            for cell in self._windows.window(key, now):
                for metric, histogram in cell.items():
                    into = merged[metric]
                    for b, n in histogram.items():
                        into[b] = into.get(b, 0) + n
            for metric in _METRICS:
                finding = self._finding(key, metric, merged[metric], now)
                if finding is not None:
                    findings.append(finding)
                    if finding.watched:
                        self._windows.keys.watch(key)
        return findings

    def _finding(self, key: WindowKey, metric: str, histogram: Histogram, now: float) -> Finding | None:
        cfg = self._config
        data_mode, dim, name = key
        p95, calls = quantile(histogram, 0.95)
        warning, critical = (cfg.warning_ms, cfg.critical_ms) if metric == "latency" else (
            cfg.ttft_warning_ms, cfg.ttft_critical_ms)  # fmt: skip
        if calls < cfg.min_calls and calls > 0:
            return None  # too few calls to judge; an open incident waits for more, or for an empty window
        severity = severity_of(calls > 0 and p95 > warning, p95 > critical)
        sustained = calls > 0 and p95 > RELAXED * warning
        if severity is None and not sustained and not self._windows.keys.is_watched(key):
            return None  # quiet, and no incident to resolve: nothing to say
        label = "latency" if metric == "latency" else "time to first token"
        column = "latency_ms" if metric == "latency" else "ttft_ms"
        window = f"{cfg.window_minutes}m"
        message = (
            f"p95 {label} of {dim} {name} is {p95 / 1000:,.1f} s over the last {window} ({calls} calls; "
            f"warning above {warning / 1000:g} s, critical above {critical / 1000:g} s)."
            if calls
            else f"no calls of {dim} {name} in the last {window}."
        )
        return Finding(
            kind="latency_p95", data_mode=data_mode, dimension=dim, key=name, severity=severity,
            value=round(p95, 1), baseline=None, threshold=warning, window=window, message=message,
            sustained=sustained,
            query=(
                f"SELECT toStartOfMinute(ts) AS minute, {'model' if dim == 'feature' else 'feature'}, "
                "count() AS calls, "
                f"round(quantile(0.95)({column})) AS p95_ms, countIf(status != 'success') AS failed FROM llm_calls "
                f"WHERE {dim} = {sql_string(name)} AND data_mode = {sql_string(data_mode)} "
                f"AND ts BETWEEN {until(now)} - INTERVAL 30 MINUTE AND {until(now)} "
                "GROUP BY ALL ORDER BY minute, calls DESC"
            ),
            at=now, detail=metric,
        )  # fmt: skip
