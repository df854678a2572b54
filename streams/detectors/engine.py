"""All stream detectors behind one interface: feed the calls as stored, collect the alerts they raise.

Detectors run on event time. :meth:`Detectors.observe` takes the calls of a batch, puts them in time order and
checks the detectors after each minute of event time (whole minutes of the clock), so seven days of
history replayed in a few seconds raise the alerts live traffic would have raised, at the times
they would have fired.

``observe`` is :meth:`Detectors.prepare` (the batch counted into per-minute partials, per key) then
:meth:`Detectors.apply` (the partials taken a minute at a time). With several workers the two halves
run apart: the worker that stored the batch prepares, and each key's owner applies its share
(``streams.detectors.partials``, ``streams.detector_agent``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pyarrow as pa

from schemas.alert import Alert, AlertKind
from schemas.config import DetectorsConfig
from streams.detectors import calls as c
from streams.detectors import partials as p
from streams.detectors.errors import ErrorRateDetector
from streams.detectors.findings import Finding, Incidents
from streams.detectors.latency import LatencyDetector
from streams.detectors.partials import Partials
from streams.detectors.prompts import PromptRegressionDetector
from streams.detectors.sessions import SessionDetector, SessionMinute
from streams.detectors.spend import SpendDetectors

STREAM_KINDS: tuple[AlertKind, ...] = (
    "spend_spike", "hourly_burn", "latency_p95", "loop_detected", "session_budget", "error_rate",
    "unattributed_spend", "prompt_version_regression", "tenant_concentration",
)  # fmt: skip
"""The kinds of alert these detectors raise: their open incidents are the ones a warm-up restores."""
IDLE_PARTITION_SECONDS = 30.0


class Detectors:
    def __init__(self, config: DetectorsConfig) -> None:
        self.config = config
        self.spend = SpendDetectors(
            config.spend_spike, config.hourly_burn, config.unattributed_spend, config.tenant_concentration
        )
        self.latency = LatencyDetector(config.latency_p95)
        self.errors = ErrorRateDetector(config.error_rate)
        self.sessions = SessionDetector(config.loop_detected, config.session_budget)
        self.prompts = PromptRegressionDetector(config.prompt_version_regression)
        self.incidents = Incidents(config.repeat_hours * 3600)
        self.now_of: dict[str, float] = {}
        """Per data mode, the detectors' clock: the event time every active partition has reached."""
        self._lagging: frozenset[int] = frozenset()
        self._partitions: dict[tuple[str, int], tuple[float, float]] = {}
        """Per (data mode, partition): the latest event time it delivered, and when (wall clock)."""

    def observe(self, calls: pa.Table, lagging: frozenset[int] = frozenset()) -> list[Alert]:
        """Feed stored calls (``llm_calls`` columns, ``sinks.call_block``); returns the alerts raised, oldest first.

        ``lagging``: source partitions with records not read yet; they hold the clock back however
        long they have been quiet (a starved partition is not an idle one).
        """
        return self.apply(self.prepare(calls), lagging)

    def prepare(self, calls: pa.Table, *, recent: bool = False) -> Partials:
        """Count stored calls into partials (per minute of event time, per key), the clock included.

        Arrow kernels over the whole batch; what :meth:`apply` takes, here or in the key's owner
        (``Partials.split``). ``recent``: the short-window detectors only (sessions, latency, errors).
        """
        ordered = c.in_time_order(calls)
        partials = Partials()
        partials.add(p.CLOCK, c.per_minute(ordered, ["data_mode", "source_partition"], [(c.AT, "max")]))
        for minute, counted in self.sessions.prepare(ordered).items():
            kinds = partials.minutes.setdefault(minute, {})
            for kind, rows in ((p.SESSIONS, counted.sessions), (p.TOOLS, counted.tools),
                               (p.PROMPT_HASHES, counted.prompts), (p.TOOL_ARGS, counted.tool_args)):  # fmt: skip
                if rows:
                    kinds[kind] = rows
        partials.add(p.LATENCY, self.latency.prepare(ordered))
        partials.add(p.ERRORS, self.errors.prepare(ordered))
        if not recent:
            partials.add(p.SPEND, self.spend.prepare(ordered))
            partials.add(p.PROMPTS, self.prompts.prepare(ordered))
        return partials

    def apply(self, partials: Partials, lagging: frozenset[int] = frozenset(), check: bool = True) -> list[Alert]:
        """Take partials a minute of event time at a time, checking the detectors after each (unless not ``check``).

        Returns the alerts raised, oldest first.
        """
        self._lagging = lagging
        alerts: list[Alert] = []
        for minute in sorted(partials.minutes):
            kinds = partials.minutes[minute]
            self._advance(kinds.get(p.CLOCK, []))
            counted = SessionMinute(
                kinds.get(p.SESSIONS, []), kinds.get(p.TOOLS, []), kinds.get(p.PROMPT_HASHES, []),
                kinds.get(p.TOOL_ARGS, []),
            )  # fmt: skip
            if counted.sessions or counted.tools or counted.prompts or counted.tool_args:
                self.sessions.observe(minute, counted)
            for kind, observe in self._observers:
                rows = kinds.get(kind)
                if rows:
                    observe(minute, rows)
            if check:
                alerts.extend(self.check())
        return alerts

    @property
    def _observers(self) -> tuple[tuple[str, Callable[[int, list[c.Row]], None]], ...]:
        return (
            (p.LATENCY, self.latency.observe),
            (p.ERRORS, self.errors.observe),
            (p.SPEND, self.spend.observe),
            (p.PROMPTS, self.prompts.observe),
        )

    def check(self) -> list[Alert]:
        """Evaluate what changed (and every open incident) at the current event time of each data mode."""
        findings: list[Finding] = []
        for data_mode, now in self.now_of.items():
            findings.extend(self.spend.check(data_mode, now))
        findings.extend(self.latency.check(self.now_of))
        findings.extend(self.errors.check(self.now_of))
        findings.extend(self.sessions.check(self.now_of))
        findings.extend(self.prompts.check(self.now_of))
        alerts = [alert for f in findings if (alert := self.incidents.update(f)) is not None]
        alerts.sort(key=lambda a: a.ts)
        return alerts

    def _advance(self, latest: Sequence[c.Row]) -> None:
        """Move the clocks: per data mode, the least of the partitions' latest event times.

        ``latest``: (data mode, partition, latest event time) of one minute's calls. Partitions are
        read at different paces (a replay may have one hours ahead of another); a clock that followed
        the fastest would judge the others' calls as long past. A partition that delivered nothing for
        ``IDLE_PARTITION_SECONDS`` stops holding the clock back, unless it is lagging (records waiting
        to be read).
        """
        wall = time.monotonic()
        partitions = self._partitions
        for mode, partition, at in latest:
            key = (mode, partition)
            before = partitions.get(key)
            partitions[key] = (at if before is None or at > before[0] else before[0], wall)
        for mode in {mode for mode, _, _ in latest}:
            active = [
                at
                for (m, partition), (at, seen) in partitions.items()
                if m == mode and (wall - seen < IDLE_PARTITION_SECONDS or partition in self._lagging)
            ]
            self.now_of[mode] = max(self.now_of.get(mode, 0.0), min(active))
