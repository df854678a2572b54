"""How a worker's Kafka session and stop are set from the environment, and how repeated client lines are told."""

from __future__ import annotations

import logging

import pytest

from producers.log_repeats import quiet_repeats
from spendstream.settings import Settings


def test_the_embedded_broker_gets_a_short_session_and_a_kafka_cluster_its_minimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SPENDSTREAM_SESSION_TIMEOUT_S", raising=False)
    monkeypatch.delenv("SPENDSTREAM_KAFKA_BOOTSTRAP", raising=False)
    assert Settings().consumer_session_timeout_s == 2.0
    monkeypatch.setenv("SPENDSTREAM_KAFKA_BOOTSTRAP", "kafka-1:9092")
    assert Settings().consumer_session_timeout_s == 6.0
    monkeypatch.setenv("SPENDSTREAM_SESSION_TIMEOUT_S", "10")
    assert Settings().consumer_session_timeout_s == 10.0


def test_a_stop_timeout_of_zero_is_refused_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_STOP_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="stop_timeout_s"):
        Settings()


def test_a_client_that_repeats_a_failure_is_heard_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka says ``Unable connect to node`` every 100 ms while its broker is gone: once is enough."""
    child = logging.getLogger("repeats_test.client")
    quiet_repeats("repeats_test", 60.0)
    caplog.set_level(logging.ERROR)
    for attempt in range(50):
        child.error("Unable connect to node with id 111: Connect call failed after %dms", attempt)
        logging.getLogger("repeats_test").error("Unable to update metadata from [111]")
    child.error("Failed fetch messages from 111")
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "Unable connect to node with id 111: Connect call failed after 0ms",
        "Unable to update metadata from [111]",
        "Failed fetch messages from 111",
    ]
