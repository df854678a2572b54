"""``latency_p95``: p95 latency and time to first token per feature and per model, over a sliding window.

Successful model calls count; a failed call's latency is a timeout or an early error (``error_rate``).

Latencies are counted in log-spaced buckets (each 10% wide), so a window of any traffic costs a
few hundred integers and its p95 is known within 5%.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import LatencyConfig
from sinks.clickhouse import sql_string
from streams.detectors import calls as c
from streams.detectors.findings import RELAXED, Finding, severity_of, until
from streams.detectors.windows import MinuteWindows, WindowKey

MEASURED_STATUS = "success"
"""The status of the model calls ``latency_p95`` measures (inhibition asks ClickHouse the same question)."""

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

    def prepare(self, calls: pa.Table) -> dict[int, list[c.Row]]:
        """Per minute of calls (``calls.in_time_order``): (metric, data mode, dimension, key, bucket, calls).

        Each count is given to its feature's window and to its model's.

        Successful model calls only: a failed call's latency is a client timeout or an early error
        (``error_rate`` has them).
        """
        if not self._config.enabled:
            return {}
        ok = calls.filter(
            pc.and_(pc.equal(calls.column("kind"), "llm"), pc.equal(calls.column("status"), MEASURED_STATUS))
        )
        found: dict[int, list[c.Row]] = {}
        for metric, column in zip(_METRICS, ("latency_ms", "ttft_ms"), strict=True):
            timed = ok.filter(pc.is_valid(ok.column(column)))
            # the bucket of each time (see Histogram); times under 1 ms share bucket 0
            ms = pc.max_element_wise(pc.cast(timed.column(column), pa.float64()), 1.0)
            buckets = pc.cast(pc.floor(pc.divide(pc.ln(ms), _LOG_GROWTH)), pa.int64())
            counted = timed.select([c.MINUTE, "data_mode", "feature", "model"]).append_column("bucket", buckets)
            for minute, groups in c.per_minute(
                counted, ["data_mode", "feature", "model", "bucket"], [([], "count_all")]
            ).items():
                rows = found.setdefault(minute, [])
                for data_mode, feature, model, bucket, calls in groups:
                    rows.append((metric, data_mode, "feature", feature, bucket, calls))
                    rows.append((metric, data_mode, "model", model, bucket, calls))
        return found

    def observe(self, minute: int, counts: list[c.Row]) -> None:
        """Count one event-time minute's calls (from :meth:`prepare`) into their windows."""
        for metric, data_mode, dimension, name, bucket, calls in counts:
            histogram = self._windows.cell((data_mode, dimension, name), minute)[metric]
            histogram[bucket] = histogram.get(bucket, 0) + calls

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
