"""`spendstream demo` and outcome events, through a real broker into ``spendstream up``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.conftest import UpProcess, free_port

pytestmark = pytest.mark.integration


def test_demo_fills_the_stack_with_priced_attributed_traffic(
    start_up: Callable[..., UpProcess], tmp_path: Path
) -> None:
    up = start_up()
    done = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "demo", "--days", "1", "--no-live", "--seed", "5"],
        env=up.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = re.search(r"([\d,]+) calls\s+([\d,]+) outcomes sent", done.stderr)
    assert sent, done.stderr
    calls, outcomes = (int(n.replace(",", "")) for n in sent.groups())
    assert calls > 1000

    assert up.wait_for("SELECT count() FROM llm_calls", calls, timeout=120) == calls
    assert up.wait_for("SELECT count() FROM outcomes", outcomes) == outcomes
    # the rollups are written by the same insert, just after llm_calls: a reader may see the calls first
    assert up.wait_for("SELECT sum(calls) FROM rollup_day WHERE dimension = 'all'", calls, timeout=30) == calls
    assert up.wait_for("SELECT sum(calls) FROM trace_rollup", calls, timeout=30) == calls
    assert up.scalar("SELECT countIf(priced = 0) FROM llm_calls") == 0
    assert up.scalar("SELECT groupUniqArray(data_mode) FROM llm_calls") == ["demo"]
    assert sorted(up.scalar("SELECT groupUniqArray(provider) FROM llm_calls")) == [  # type: ignore[arg-type]
        "anthropic", "google", "internal", "openai",
    ]  # fmt: skip
    features = up.scalar("SELECT groupUniqArray(key) FROM rollup_day WHERE dimension = 'feature'")
    assert set(features) >= {
        "sales.email_draft",
        "sales.proposal_summary",
        "sales.crm_followup",
        "support.ticket_reply",
    }  # type: ignore[arg-type]
    # the coordinator's traces hold the whole delegation chain
    agents = up.scalar("SELECT groupUniqArrayArray(agents) FROM trace_rollup WHERE root_feature = 'eng.code_review'")
    assert sorted(agents) == ["code_agent", "coordinator", "syntax_analyzer"]  # type: ignore[arg-type]
    assert up.scalar("SELECT countIf(attempt = 2) FROM llm_calls") > 0
    total = up.scalar("SELECT round(sum(cost_usd), 6) FROM llm_calls")
    assert up.scalar("SELECT round(sum(cost_usd), 6) FROM rollup_day WHERE dimension = 'all'") == total

    # the report: terminal tables and a self-contained page with charts
    page = tmp_path / "report.html"
    shown = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "report", "--data-mode", "demo", "--html", str(page)],
        env=up.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"last 7 days ${total:,.2f}" in shown.stdout  # type: ignore[str-format]
    top_feature = up.scalar(
        "SELECT key FROM rollup_day WHERE dimension = 'feature' GROUP BY key ORDER BY sum(cost_usd) DESC LIMIT 1"
    )
    assert "top feature" in shown.stdout and str(top_feature) in shown.stdout
    assert "cost per outcome" in shown.stdout and "meeting_booked" in shown.stdout
    html = page.read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") >= 2 and "src=" not in html
    assert str(top_feature) in html and "Agents per workflow" in html and "coordinator" in html


def test_outcomes_land_joinable_and_bad_ones_are_kept_with_a_reason(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    up = start_up()
    topic = up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.outcomes"
    now = datetime.now(UTC).isoformat()
    producer = KafkaProducer(bootstrap_servers=broker)
    for n in range(5):
        outcome = {"event_id": f"o-{n}", "ts": now, "outcome": "meeting_booked", "trace_id": f"trace-{n}",
                   "feature": "sales.email_draft", "value": 1}  # fmt: skip
        producer.send(topic, json.dumps(outcome).encode())
    producer.send(
        topic, json.dumps({"event_id": "o-0", "ts": now, "outcome": "meeting_booked", "trace_id": "trace-0"}).encode()
    )
    producer.send(topic, json.dumps({"event_id": f"o-{uuid.uuid4()}", "ts": now, "outcome": "meeting_booked"}).encode())
    producer.flush()
    producer.close()

    assert up.wait_for("SELECT count() FROM rejected_events", 1) == 1
    assert up.wait_for("SELECT count() FROM outcomes FINAL", 5) == 5
    topic_seen, reason = up.client().query("SELECT topic, reason FROM rejected_events").result_rows[0]
    assert topic_seen == topic
    assert "an outcome needs trace_id or session_id" in reason


def test_a_report_before_anything_was_migrated_says_what_to_check(tmp_path: Path) -> None:
    env = {**os.environ, "SPENDSTREAM_HOME": str(tmp_path / "fresh"), "SPENDSTREAM_SQL_PORT": str(free_port())}
    shown = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "report"], env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 1
    assert "cannot read spendstream's tables" in shown.stderr and "spendstream migrate" in shown.stderr
