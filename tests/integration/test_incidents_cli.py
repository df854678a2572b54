"""`spendstream alerts` lists incidents (one line from the alert that opened one to the one that resolved it)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import clickhouse_connect
import pytest

from schemas.alert import Alert, alert_id_for
from sinks.batch import ALERT_COLUMNS, alert_row
from spendstream.sql_endpoint import ADMIN_USER
from tests.conftest import UpProcess

pytestmark = pytest.mark.integration


def alert(n: int, status: str, severity: str, key: str, at: datetime) -> Alert:
    dedup = f"loop_detected:real:session_id:{key}"
    return Alert(
        alert_id=alert_id_for(f"{dedup}#{n}"), ts=at, kind="loop_detected", severity=severity,  # type: ignore[arg-type]
        dimension="session_id", key=key, value=float(n), window="session", message="m", query="SELECT 1",
        dedup_key=dedup, status=status,  # type: ignore[arg-type]
    )  # fmt: skip


def test_alerts_lists_each_incident_once_with_its_updates(start_up: Callable[..., UpProcess]) -> None:
    up = start_up()
    token = (up.home / "sql-admin-token").read_text().strip()
    admin = clickhouse_connect.get_client(
        host="127.0.0.1", port=up.sql_port, database="spendstream", username=ADMIN_USER, password=token
    )
    t0 = datetime(2026, 11, 30, 9, tzinfo=UTC)
    rows = [  # s-1 fired, escalated, got a reminder and resolved, then fired again; s-2 is still firing
        alert(0, "firing", "warning", "s-1", t0),
        alert(1, "firing", "critical", "s-1", t0 + timedelta(minutes=5)),
        alert(2, "firing", "critical", "s-1", t0 + timedelta(hours=4)),
        alert(3, "resolved", "critical", "s-1", t0 + timedelta(hours=5)),
        alert(4, "firing", "warning", "s-1", t0 + timedelta(days=1)),
        alert(5, "firing", "warning", "s-2", t0 + timedelta(days=1, hours=1)),
    ]
    admin.insert("alerts", [alert_row(a) for a in rows], column_names=list(ALERT_COLUMNS))

    listed = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "alerts"], env=up.env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if "loop_detected" in line]
    assert len(lines) == 3, listed.stdout
    newest, reopened, first = lines
    assert "s-2" in newest and "firing" in newest
    assert "s-1" in reopened and "firing" in reopened and "warning" in reopened
    assert "s-1" in first and "resolved" in first and "critical" in first and " 4 " in first  # four alerts, one line
    raw = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "alerts", "--raw"],
        env=up.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert raw.stdout.count("loop_detected") == 6
