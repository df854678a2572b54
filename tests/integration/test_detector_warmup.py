"""A restarted worker's detectors warm up from ClickHouse: no blind week, no alert on an empty baseline."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from producers.demo_incidents import LOOP_SESSION, SPIKE_FEATURE, DemoIncidents
from schemas.alert import DAY_WINDOW, Alert, alert_id_for
from schemas.config import DetectorsConfig
from sinks import call_block
from sinks.batch import CallRows, alert_row
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from streams.detectors.engine import Detectors
from streams.detectors.warmup import warm_up
from tests.demo_calls import NOW, demo_calls, priced

pytestmark = pytest.mark.integration


def test_a_restarted_worker_catches_the_spike_from_its_warmed_baseline(
    chdb_dsn: str, ch: Client, database: str
) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    incidents = DemoIncidents.before(NOW)
    restart = incidents.spike_window[0]  # the worker restarts as the spike begins
    before: list[tuple[object, ...]] = []
    after: list[tuple[object, ...]] = []
    for batch in demo_calls(incidents):
        rows = priced(batch).calls.rows
        before.extend(r for r in rows if r[1] < restart)
        after.extend(r for r in rows if r[1] >= restart)
    # alerts that are not the detectors' incidents: a budget threshold and a scheduled daily check
    others = [
        Alert(alert_id=alert_id_for(kind), ts=restart, kind=kind, severity="warning", dimension="tenant_id",  # type: ignore[arg-type]
              key="tenant_initech", value=1.0, window=window, message="m", query="SELECT 1", dedup_key=kind)
        for kind, window in (("budget_threshold", "1mo"), ("spend_spike", DAY_WINDOW))
    ]  # fmt: skip
    sink.add(CallRows(before), [], alerts=[alert_row(a) for a in others])
    sink.flush()

    warmed = Detectors(DetectorsConfig())
    summary = sink.read(lambda client, db: warm_up(warmed, client, db))
    cold = Detectors(DetectorsConfig())

    assert summary.spend_rows > 1000 and summary.prompt_versions >= 5 and summary.recent_calls > 0
    assert summary.open_incidents == 0  # neither of the other alerts is restored as an incident
    caught = [a for a in warmed.observe(call_block.table(after)) if a.status == "firing"]
    missed = [a for a in cold.observe(call_block.table(after)) if a.status == "firing"]
    assert ("hourly_burn", SPIKE_FEATURE) in {(a.kind, a.key) for a in caught}
    assert ("spend_spike", SPIKE_FEATURE) in {(a.kind, a.key) for a in caught}
    # without the warm-up: less than two days seen, so no spend baseline and no spend alert at all
    assert not [a for a in missed if a.kind in ("hourly_burn", "spend_spike")]
    # the loop ended (its session went quiet) before the restart: not raised again
    assert LOOP_SESSION not in {a.key for a in caught}
