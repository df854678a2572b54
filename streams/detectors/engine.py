"""All stream detectors behind one interface: feed the calls as stored, collect the alerts they raise.

Detectors run on event time. :meth:`Detectors.observe` takes the calls of a batch in time order and
checks the detectors after each minute of event time (whole minutes of the clock), so seven days of
history replayed in a few seconds raise the alerts live traffic would have raised, at the times
they would have fired.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from schemas.alert import Alert, AlertKind
from schemas.config import DetectorsConfig
from streams.detectors import calls as c
from streams.detectors.errors import ErrorRateDetector
from streams.detectors.findings import Finding, Incidents
from streams.detectors.latency import LatencyDetector
from streams.detectors.loops import LoopDetector
from streams.detectors.prompts import PromptRegressionDetector
from streams.detectors.spend import SpendDetectors

STREAM_KINDS: tuple[AlertKind, ...] = (
    "spend_spike", "hourly_burn", "latency_p95", "loop_detected", "error_rate", "unattributed_spend",
    "prompt_version_regression", "tenant_concentration",
)  # fmt: skip
"""The kinds of alert these detectors raise: their open incidents are the ones a warm-up restores."""
_SLICE_SECONDS = 60.0
IDLE_PARTITION_SECONDS = 30.0


class Detectors:
    def __init__(self, config: DetectorsConfig) -> None:
        self.config = config
        self.spend = SpendDetectors(
            config.spend_spike, config.hourly_burn, config.unattributed_spend, config.tenant_concentration
        )
        self.latency = LatencyDetector(config.latency_p95)
        self.errors = ErrorRateDetector(config.error_rate)
        self.loops = LoopDetector(config.loop_detected)
        self.prompts = PromptRegressionDetector(config.prompt_version_regression)
        self.incidents = Incidents(config.repeat_hours * 3600)
        self.now_of: dict[str, float] = {}
        """Per data mode, the detectors' clock: the event time every active partition has reached."""
        self._lagging: frozenset[int] = frozenset()
        self._partitions: dict[tuple[str, int], tuple[float, float]] = {}
        """Per (data mode, partition): the latest event time it delivered, and when (wall clock)."""

    def observe(self, rows: Sequence[c.Row], lagging: frozenset[int] = frozenset()) -> list[Alert]:
        """Feed stored calls (rows of ``llm_calls``); returns the alerts raised, oldest first.

        ``lagging``: source partitions with records not read yet; they hold the clock back however
        long they have been quiet (a starved partition is not an idle one).
        """
        self._lagging = lagging
        if not rows:
            return []
        ordered = sorted(rows, key=lambda row: row[c.TS])
        alerts: list[Alert] = []
        start = 0
        minute = ordered[0][c.TS].timestamp() // _SLICE_SECONDS
        for i in range(1, len(ordered) + 1):
            if i < len(ordered) and ordered[i][c.TS].timestamp() // _SLICE_SECONDS == minute:
                continue
            self._feed(ordered[start:i])
            alerts.extend(self.check())
            if i < len(ordered):
                start = i
                minute = ordered[i][c.TS].timestamp() // _SLICE_SECONDS
        return alerts

    def observe_recent(self, rows: Sequence[c.Row]) -> None:
        """Feed stored calls to the short-window detectors only (sessions, latency, errors): warm-up."""
        self._advance(rows)
        self.loops.observe(rows)
        self.latency.observe(rows)
        self.errors.observe(rows)

    def check(self) -> list[Alert]:
        """Evaluate what changed (and every open incident) at the current event time of each data mode."""
        findings: list[Finding] = []
        for data_mode, now in self.now_of.items():
            findings.extend(self.spend.check(data_mode, now))
        findings.extend(self.latency.check(self.now_of))
        findings.extend(self.errors.check(self.now_of))
        findings.extend(self.loops.check(self.now_of))
        findings.extend(self.prompts.check(self.now_of))
        alerts = [alert for f in findings if (alert := self.incidents.update(f)) is not None]
        alerts.sort(key=lambda a: a.ts)
        return alerts

    def _feed(self, rows: Sequence[c.Row]) -> None:
        self.observe_recent(rows)
        self.spend.observe(rows)
        self.prompts.observe(rows)

    def _advance(self, rows: Sequence[c.Row]) -> None:
        """Move the clocks: per data mode, the least of the partitions' latest event times.

        Partitions are read at different paces (a replay may have one hours ahead of another); a
        clock that followed the fastest would judge the others' calls as long past. A partition
        that delivered nothing for ``IDLE_PARTITION_SECONDS`` stops holding the clock back, unless it
        is lagging (records waiting to be read).
        """
        if not rows:
            return
        wall = time.monotonic()
        partitions = self._partitions
        modes = set()
        for row in rows:
            key = (row[c.DATA_MODE], row[c.SOURCE_PARTITION])
            at = row[c.TS].timestamp()
            latest = partitions.get(key)
            partitions[key] = (at if latest is None or at > latest[0] else latest[0], wall)
            modes.add(key[0])
        for mode in modes:
            active = [
                at
                for (m, partition), (at, seen) in partitions.items()
                if m == mode and (wall - seen < IDLE_PARTITION_SECONDS or partition in self._lagging)
            ]
            self.now_of[mode] = max(self.now_of.get(mode, 0.0), min(active))
