"""Hierarchical attribution: a coordinator -> code agent -> syntax analyzer request, tracked with the SDK,
sent through Kafka and stored by ``spendstream up``, comes out of ClickHouse to the exact amount."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from producers import Emitter, Tracker, carry_context, current_trace
from sinks.traces import agents_by_workflow, trace_report
from spendstream.cli import main
from tests.conftest import UpProcess

pytestmark = pytest.mark.integration

# USD per million tokens, so every amount below is exact
CONFIG = """
prices:
  overrides:
    - {provider: house, model: planner-l, input_per_mtok: 10, output_per_mtok: 30}
    - {provider: house, model: coder-m, input_per_mtok: 3, output_per_mtok: 15}
    - {provider: house, model: checker-s, input_per_mtok: 0.15, output_per_mtok: 0.6}
"""
COORDINATOR = 2000 * 10e-6 + 500 * 30e-6  # $0.035
CODE_AGENT = 3000 * 3e-6 + 1500 * 15e-6  # $0.0315, twice
SYNTAX_ANALYZER = 1000 * 0.15e-6 + 100 * 0.6e-6  # $0.00021, three times under each code agent
TOTAL = COORDINATOR + 2 * CODE_AGENT + 6 * SYNTAX_ANALYZER  # $0.09926


def run_request(tracker: Tracker) -> str:
    """The coordinator plans, two code agents write (in threads), each runs three syntax checks."""

    def syntax_check() -> None:
        with tracker.attribute(agent_id="syntax_analyzer"), tracker.track(provider="house", model="checker-s") as call:
            call.usage(input_tokens=1000, output_tokens=100)

    def code_agent() -> None:
        with tracker.attribute(agent_id="code_agent"), tracker.track(provider="house", model="coder-m") as call:
            call.usage(input_tokens=3000, output_tokens=1500)
            for _ in range(3):
                syntax_check()

    with tracker.attribute(agent_id="coordinator"), tracker.track(provider="house", model="planner-l") as plan:
        plan.usage(input_tokens=2000, output_tokens=500)
        trace = current_trace()
        assert trace is not None
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(carry_context(code_agent)) for _ in range(2)]:
                done.result()
    return trace[0]


def test_a_three_level_request_rolls_up_to_the_exact_cost_per_call_agent_and_depth(
    start_up: Callable[..., UpProcess], broker: str, tmp_path: Path
) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text(CONFIG)
    up = start_up(SPENDSTREAM_CONFIG=str(config))
    emitter = Emitter(broker, topic=up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.calls")
    tracker = Tracker(emitter, feature="eng.code_review", data_mode="test")
    traces = [run_request(tracker) for _ in range(3)]
    assert emitter.close().delivered == 27
    assert up.wait_for("SELECT count() FROM llm_calls", 27) == 27

    report = trace_report(up.client(), traces[0])

    assert report.total_usd == pytest.approx(TOTAL, abs=1e-9)
    assert [(depth, agent, calls) for depth, agent, calls, _ in report.by_depth] == [
        (0, "coordinator", 1), (1, "code_agent", 2), (2, "syntax_analyzer", 6),
    ]  # fmt: skip
    assert [usd for *_, usd in report.by_depth] == pytest.approx(
        [COORDINATOR, 2 * CODE_AGENT, 6 * SYNTAX_ANALYZER], abs=1e-9
    )
    code_agents = [row for row in report.tree if row[2] == "code_agent"]
    assert [row[6] for row in code_agents] == pytest.approx([CODE_AGENT + 3 * SYNTAX_ANALYZER] * 2, abs=1e-9)
    assert [row[2] for row in report.critical_path] == ["coordinator", "code_agent", "syntax_analyzer"]
    assert report.unreached == (0, 0.0)

    per_agent = {(workflow, agent): row for workflow, agent, *row in agents_by_workflow(up.client(), "test", 1)}
    calls, n_traces, usd, per_trace, _ = per_agent[("eng.code_review", "code_agent")]
    assert (calls, n_traces) == (6, 3) and usd == pytest.approx(6 * CODE_AGENT, abs=1e-9)
    assert per_trace == pytest.approx(2 * CODE_AGENT, abs=1e-6)
    most_expensive = max(per_agent.items(), key=lambda item: item[1][2])[0]
    assert most_expensive == ("eng.code_review", "code_agent")

    shown = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "trace", traces[1]],
        env=up.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"${TOTAL:,.6f} in 9 calls" in shown.stdout and "syntax_analyzer" in shown.stdout
    assert "critical path: coordinator:planner-l" in shown.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "trace", "no-such-trace"],
        env=up.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "has no stored root call" in missing.stderr


def test_usage_payloads_take_their_records_time_and_tenant_and_untagged_calls_are_refused(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    # A hosted cost tracker's SDK: camelCase, no ts, its userId an account hash; the worker is strict.
    up = start_up(SPENDSTREAM_REQUIRE_FEATURE="true", SPENDSTREAM_USERID_AS="tenant_id")
    producer = Producer({"bootstrap.servers": broker})
    topic = up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.calls"
    hour_ago = int(time.time() * 1000) - 3_600_000

    def send(payload: dict[str, object] | bytes, stamp: int) -> None:
        value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        producer.produce(topic, value, timestamp=stamp)

    def usage(n: int, **fields: object) -> dict[str, object]:
        payload: dict[str, object] = {
            "externalRequestId": f"req-{n}", "endpointTag": "support.reply", "promptVersion": "v2",
            "userId": f"acct_{n % 2}f3e", "inputTokens": 1000, "outputTokens": 100, "latencyMs": 640,
            "status": "ok", "dataMode": "test", "environment": "production", "provider": "openai", "model": "gpt-4o",
        }  # fmt: skip
        return {**payload, **fields}

    for n in range(6):
        send(usage(n), hour_ago + n * 1000)
    send(usage(6, endpointTag=None, status=429), hour_ago + 6000)  # null: untagged
    send({k: v for k, v in usage(7).items() if k != "endpointTag"}, hour_ago + 7000)
    send(json.dumps({"event_id": "native-untagged", "ts": hour_ago, "provider": "openai", "model": "gpt-4o"}).encode(),
         hour_ago)  # fmt: skip
    send(usage(8, event_id="req-8b"), hour_ago)  # twins
    send({k: v for k, v in usage(9).items() if k != "externalRequestId"}, hour_ago)
    send(usage(10, inputTokens="lots"), hour_ago)
    send(json.dumps(usage(11, outputTokens=10**30)).encode(), hour_ago)
    send(usage(12, model=None), hour_ago)
    assert producer.flush(30) == 0

    assert up.wait_for("SELECT count() FROM rejected_events", 8) == 8
    started = up.log.read_text()
    assert "calls without feature refused (SPENDSTREAM_REQUIRE_FEATURE)" in started
    assert "a usage payload's userId stored as tenant_id (SPENDSTREAM_USERID_AS)" in started
    assert up.wait_for("SELECT count() FROM llm_calls", 6) == 6
    stored = (
        up.client()
        .query(
            "SELECT event_id, toUnixTimestamp64Milli(ts), tenant_id, user_id, feature, prompt_version, status,"
            " environment, data_mode, priced FROM llm_calls ORDER BY event_id"
        )
        .result_rows
    )
    assert [tuple(row) for row in stored] == [
        (f"req-{n}", hour_ago + n * 1000, f"acct_{n % 2}f3e", "", "support.reply", "v2", "success", "prod", "test", 1)
        for n in range(6)
    ]
    assert up.scalar("SELECT round(sum(cost_usd), 6) FROM llm_calls") == 6 * 0.0035
    rejected = dict(up.client().query("SELECT event_id, error_kind || ': ' || reason FROM rejected_events").result_rows)
    untagged = (
        "missing_feature: feature missing: this worker refuses calls not tagged with the feature they serve "
        "(SPENDSTREAM_REQUIRE_FEATURE); send feature (endpointTag in the usage payload)"
    )
    assert rejected == {
        "req-6": untagged,
        "req-7": untagged,
        "native-untagged": untagged,
        "req-8b": "schema: externalRequestId and event_id both given: send one (externalRequestId is read as event_id)",
        "": "schema: externalRequestId missing: the call's idempotency key (a call sent twice is counted once)",
        "req-10": "schema: inputTokens: Input should be a valid integer, unable to parse string as an integer",
        "req-11": "schema: outputTokens: Input should be less than or equal to 100000000",
        "req-12": "schema: model missing: a call is priced and rolled up by its provider and model; add them to "
        "the usage payload",
    }


def test_emit_sends_a_usage_payload_in_the_contracts_terms_and_refuses_what_the_worker_would(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"emit-{uuid.uuid4().hex[:8]}"
    lines = [
        {"externalRequestId": "req-1", "endpointTag": "support.reply", "userId": "acct_1", "provider": "openai",
         "model": "gpt-4o", "inputTokens": 10, "status": "failed"},
        {"externalRequestId": "req-2", "userId": "acct_1", "provider": "openai", "model": "gpt-4o"},
        {"externalRequestId": "req-3", "event_id": "req-3", "endpointTag": "x", "provider": "p", "model": "m"},
    ]  # fmt: skip
    monkeypatch.setenv("SPENDSTREAM_KAFKA_BOOTSTRAP", broker)
    before = datetime.now(UTC)
    result = CliRunner().invoke(
        main, ["emit", "--topic", topic, "-"], input="\n".join(json.dumps(line) for line in lines),
        env={"SPENDSTREAM_REQUIRE_FEATURE": "true", "SPENDSTREAM_USERID_AS": "tenant_id"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "line 2: feature missing: this worker refuses calls not tagged" in result.output
    assert "line 3: externalRequestId and event_id both given: send one" in result.output

    consumer = Consumer({"bootstrap.servers": broker, "group.id": topic})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
    message = None
    deadline = time.monotonic() + 30
    while message is None and time.monotonic() < deadline:
        message = consumer.poll(1.0)
    consumer.close()
    assert message is not None and message.error() is None
    sent = json.loads(message.value())
    assert (sent["event_id"], sent["feature"], sent["tenant_id"], sent["status"]) == (
        "req-1", "support.reply", "acct_1", "error",
    )  # fmt: skip
    assert "user_id" not in sent and before <= datetime.fromisoformat(sent["ts"]) <= datetime.now(UTC)
