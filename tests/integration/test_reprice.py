"""Repricing: a corrected price fixes llm_calls and every rollup as if it had been right from the start."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from producers import Emitter
from schemas.config import PriceOverride
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from streams.ingest import Ingestor, RawEvent
from streams.pricing import Pricer
from streams.reprice import reprice
from tests.conftest import UpProcess

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
SELF_HOSTED = PriceOverride(provider="selfhost", model="acme-llm", input_per_mtok=1.0, output_per_mtok=2.0)
NEGOTIATED = PriceOverride(provider="openai", model="gpt-4o", input_per_mtok=2.0, output_per_mtok=8.0)


def events() -> list[bytes]:
    out = []
    for n in range(120):
        model = ("gpt-4o", "openai") if n % 3 else ("acme-llm", "selfhost")
        event = {
            "event_id": f"e-{n}", "ts": (NOW - timedelta(hours=n % 30, minutes=n)).isoformat(),
            "model": model[0], "provider": model[1], "feature": ["a", "b"][n % 2], "prompt_version": "v1",
            "tenant_id": f"t{n % 4}", "user_id": f"u{n % 7}", "trace_id": f"tr-{n // 4}",
            "input_tokens": 1000 + n, "output_tokens": 100 + n, "cache_read_tokens": 10, "latency_ms": 100.0 + n,
        }  # fmt: skip
        if n % 4 == 3:
            event["parent_id"] = f"e-{n - 1}"
        if n == 5:
            event["cost_usd"] = 0.42  # stated by the caller: never repriced
        out.append(json.dumps(event).encode())
    return out


def load(chdb_dsn: str, ch: Client, database: str, pricer: Pricer) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    result = Ingestor(pricer, "llm.calls").process(RawEvent(raw, 0, n) for n, raw in enumerate(events()))
    assert not result.rejected
    sink.add(result.calls, result.rejected)
    sink.flush()
    sink.close()


def snapshot(ch: Client, database: str) -> dict[str, object]:
    def rows(query: str) -> list[tuple[object, ...]]:
        return sorted(ch.query(query.format(db=database)).result_rows)

    rollup = (
        "SELECT dimension, key, data_mode, bucket, sum(calls), round(sum(cost_usd), 9), sum(unpriced_calls) "
        "FROM {db}.%s GROUP BY dimension, key, data_mode, bucket"
    )
    return {
        "llm_calls": rows(
            "SELECT event_id, round(cost_usd, 12), priced, price_source, input_price_per_mtok, output_price_per_mtok "
            "FROM {db}.llm_calls FINAL"
        ),
        "minute": rows(rollup % "rollup_minute"),
        "hour": rows(rollup % "rollup_hour"),
        "day": rows(rollup % "rollup_day"),
        "trace": rows(
            "SELECT trace_id, sum(calls), round(sum(cost_usd), 9), min(first_ts), max(root_event_id) "
            "FROM {db}.trace_rollup GROUP BY trace_id"
        ),
    }


def test_a_corrected_price_fixes_history_as_if_it_had_always_been_right(chdb_dsn: str, ch: Client) -> None:
    corrected = Pricer([SELF_HOSTED, NEGOTIATED])
    load(chdb_dsn, ch, "t_reprice_fresh", corrected)
    load(chdb_dsn, ch, "t_reprice_fixed", Pricer())
    before = snapshot(ch, "t_reprice_fixed")
    fresh = snapshot(ch, "t_reprice_fresh")
    assert all(before[name] != fresh[name] for name in fresh)
    unpriced = ch.query("SELECT countIf(priced = 0) FROM t_reprice_fixed.llm_calls").result_rows[0][0]
    assert unpriced == 40

    preview = reprice(ch, "t_reprice_fixed", corrected, (NOW - timedelta(days=3)).date(), dry_run=True)
    assert snapshot(ch, "t_reprice_fixed") == before
    result = reprice(ch, "t_reprice_fixed", corrected, (NOW - timedelta(days=3)).date())

    assert result == preview
    assert (result.examined, result.changed, result.newly_priced) == (119, 119, 40)
    assert snapshot(ch, "t_reprice_fixed") == fresh
    assert reprice(ch, "t_reprice_fixed", corrected, (NOW - timedelta(days=3)).date()).changed == 0


def test_reprice_is_limited_to_a_model_and_a_start_day(chdb_dsn: str, ch: Client) -> None:
    load(chdb_dsn, ch, "t_reprice_scoped", Pricer())
    since = NOW.date()
    before = dict(
        ch.query("SELECT event_id, cost_usd FROM t_reprice_scoped.llm_calls WHERE model = 'gpt-4o'").result_rows
    )

    result = reprice(ch, "t_reprice_scoped", Pricer([SELF_HOSTED, NEGOTIATED]), since, model="acme-llm")

    costs = ch.query(
        "SELECT toDate(ts) >= today() AS recent, countIf(priced = 0), sum(cost_usd) FROM t_reprice_scoped.llm_calls "
        "WHERE model = 'acme-llm' GROUP BY recent ORDER BY recent"
    ).result_rows
    recent_priced = ch.query(
        "SELECT count() FROM t_reprice_scoped.llm_calls WHERE model = 'acme-llm' AND toDate(ts) >= %(d)s",
        parameters={"d": since},
    ).result_rows[0][0]
    assert result.newly_priced == recent_priced > 0
    assert len(costs) == 2  # the calls span 30 hours: today and earlier days
    assert costs[-1][1] == 0  # today's self-hosted calls are priced now
    assert costs[0][1] > 0  # earlier days were left alone
    after = dict(
        ch.query("SELECT event_id, cost_usd FROM t_reprice_scoped.llm_calls WHERE model = 'gpt-4o'").result_rows
    )
    assert after == before
    unpriced = ch.query(
        "SELECT sum(unpriced_calls) FROM t_reprice_scoped.rollup_day WHERE dimension = 'all'"
    ).result_rows[0][0]
    assert unpriced == 40 - recent_priced


def test_spendstream_reprice_fixes_a_running_stack(
    start_up: Callable[..., UpProcess], broker: str, tmp_path: Path
) -> None:
    up = start_up()
    emitter = Emitter(broker, topic=up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.calls")
    for n in range(10):
        emitter.emit_raw(
            json.dumps({"event_id": f"r-{n}", "ts": NOW.isoformat(), "provider": "selfhost", "model": "acme-llm",
                        "feature": "sales.email_draft", "input_tokens": 1_000_000, "output_tokens": 500_000}).encode()
        )  # fmt: skip
    assert emitter.close().delivered == 10
    assert up.wait_for("SELECT countIf(priced = 0) FROM llm_calls", 10) == 10
    config = tmp_path / "spendstream.yaml"
    config.write_text(
        "prices:\n  overrides:\n    - {provider: selfhost, model: acme-llm, input_per_mtok: 1, output_per_mtok: 2}\n"
    )

    done = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "reprice", "--since", NOW.date().isoformat()],
        env={**up.env, "SPENDSTREAM_CONFIG": str(config)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "changed 10 (10 newly priced), total +20.000000 USD" in done.stdout
    assert up.scalar("SELECT sum(cost_usd) FROM llm_calls") == 20.0
    assert up.scalar("SELECT sum(cost_usd) FROM rollup_day WHERE dimension = 'feature'") == 20.0
    assert up.scalar("SELECT sum(unpriced_calls) FROM rollup_hour WHERE dimension = 'model'") == 0
