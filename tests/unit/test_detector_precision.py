"""Precision and recall on a smaller ``bench.detectors``: two weeks of realistic traffic, at half its volume.

The quiet fortnight has what pages people wrongly: office hours and quiet weekends in three time zones,
growth, a batch job every night at 02:00 UTC, teams busy at twice their rate now and then, a feature
launched and a tenant onboarded mid-run. It must raise nothing. Each type of incident of
``bench.incidents``, injected into its second week, must be caught by the alert a person would expect.
"""

from __future__ import annotations

from functools import cache

import pytest

from bench.detectors import Raised, feed, injected, matches, opened, price
from bench.incidents import (
    Incident,
    Planned,
    Quiet,
    feature_spike,
    hourly_burn,
    inject,
    latency_collapse,
    night_burn,
    prompt_loop,
    prompt_regression,
    rate_limit_storm,
    session_outlier,
    tenant_takeover,
    tool_loop,
    unattributed_surge,
    unpriced_model,
    weekend_spike,
)
from bench.traffic import DAY_MS, START, Traffic
from schemas.config import DetectorsConfig

HISTORY_DAYS = 7
DAYS = 7
SCHEDULE: tuple[Planned, ...] = (
    # (incident, day of the second week (0: Monday), hour UTC): one of each type, a day apart on the same spend
    (latency_collapse, 0, 14),
    (tool_loop, 0, 20),
    (feature_spike, 1, 13),
    (rate_limit_storm, 1, 15),
    (night_burn, 2, 3),  # code.assist at 03:00, below its afternoon rate
    (unpriced_model, 2, 16),
    (prompt_loop, 2, 10),
    (tenant_takeover, 3, 6),
    (prompt_regression, 3, 11),
    (session_outlier, 4, 10),
    (hourly_burn, 4, 15),
    (unattributed_surge, 5, 2),
    (weekend_spike, 5, 8),  # docs.answer on a Saturday: many times a weekend day, under twice a flat daily average
)


@cache
def runs() -> tuple[tuple[Raised, ...], tuple[Incident, ...], tuple[Raised, ...]]:
    """The alerts of the quiet fortnight, the incidents injected into its second week, and the alerts then."""
    traffic = Traffic(seed=1, days=HISTORY_DAYS + DAYS, scale=1.0, launch_day=9.5, onboard_day=8.5)
    calls = traffic.calls()
    quiet = price(calls, traffic)
    first_day = int(START.timestamp() * 1000) + HISTORY_DAYS * DAY_MS
    incidents = inject(traffic, Quiet(calls), first_day, DAYS, SCHEDULE)
    config = DetectorsConfig()
    quiet_raised, _ = feed(quiet, 2000, config)
    raised, _ = feed(injected(quiet, incidents, traffic), 2000, config)
    return tuple(quiet_raised), tuple(incidents), tuple(raised)


def test_a_quiet_fortnight_with_its_weekly_shape_and_growth_raises_nothing() -> None:
    quiet, _, _ = runs()
    false_alarms = [f"{r.alert.kind} {r.alert.dimension}={r.alert.key}: {r.alert.message}" for r in opened(quiet)]
    assert false_alarms == []


@pytest.mark.parametrize("n", range(len(SCHEDULE)), ids=[planned[0].__name__ for planned in SCHEDULE])
def test_each_type_of_incident_is_caught_by_the_alert_people_expect(n: int) -> None:
    _, incidents, raised = runs()
    incident = incidents[n]  # inject keeps the schedule's order, and every one fits in the week
    of_kind = [f"{r.alert.dimension}={r.alert.key} {r.alert.status}" for r in raised if r.alert.kind == incident.kind]
    caught = [r for r in raised if matches(incident, r)]
    assert caught, f"no {incident.kind} for {incident.key}; of that kind: {of_kind}"
