"""A detector owner against a real engine: warm-up of its keys, messages already read, calls whose partials
never came."""

from __future__ import annotations

import zlib

import pyarrow as pa
import pytest
import yaml
from clickhouse_connect.driver.client import Client

from schemas.alert import Alert
from schemas.config import DetectorsConfig
from sinks.batch import CallRows
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from streams.detector_agent import DetectorOwner
from streams.detectors.engine import Detectors
from streams.detectors.partials import PartialsMessage
from streams.detectors.routing import PartialsRouter
from streams.ingest import Ingestor, RawEvent
from streams.pricing import Pricer
from tests.detector_traffic import CONFIG, encoded, events

pytestmark = pytest.mark.integration

PARTITIONS = 4


def stored_calls() -> CallRows:
    position = [0] * PARTITIONS
    raws = []
    for value, key in encoded(events(seed=5)):
        source = zlib.crc32(key.encode()) % PARTITIONS
        position[source] += 1
        raws.append(RawEvent(value, source, position[source]))
    return Ingestor(Pricer([]), "llm.calls").process(raws).calls


def firing(alerts: list[Alert]) -> set[tuple[str, str, str]]:
    return {(a.kind, a.dimension, a.key) for a in alerts if a.status == "firing"}


def test_owners_read_back_the_calls_a_dead_worker_stored_without_sending_their_partials(
    chdb_dsn: str, ch: Client, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    config = DetectorsConfig.model_validate(yaml.safe_load(CONFIG)["detectors"])
    calls = stored_calls()
    assert calls.columns is not None
    want = firing(Detectors(config).observe(calls.columns))
    router = PartialsRouter(Detectors(config), PARTITIONS)
    owners = [DetectorOwner(config, PARTITIONS) for _ in range(2)]  # two workers, two partitions each
    for n, owner in enumerate(owners):
        owner.assign({n, n + 2})
        sink.read(lambda client, db: owner.warm_up({n: 0, n + 2: 0}, client, db))  # noqa: B023
    raised: list[Alert] = []
    offset = [0] * PARTITIONS

    def deliver(read: pa.Table, stored: pa.Table) -> None:
        for partition, message in router.messages(read, stored, range(PARTITIONS), ()):
            travelled = PartialsMessage.decode(message.encode())
            raised.extend(owners[partition % 2].take(partition, offset[partition], travelled, sink.read))
            offset[partition] += 1

    cut = int(calls.columns.num_rows * 0.9)  # the incidents are in the last tenth
    for start in range(0, cut, 500):
        batch = calls.columns.slice(start, min(500, cut - start))
        sink.add(CallRows(calls.rows[start : start + batch.num_rows]), [])
        sink.flush()
        deliver(batch, sink.take_stored().columns)
    # a worker stores the rest and dies before sending their partials ...
    sink.add(CallRows(calls.rows[cut:]), [])
    sink.flush()
    sink.take_stored()
    # ... the worker given its partitions reads those calls again, finds them stored, and says so
    again = calls.columns.slice(cut)
    sink.add(CallRows(calls.rows[cut:]), [])
    assert sink.flush().duplicates == again.num_rows
    nothing = sink.take_stored().columns
    assert nothing.num_rows == 0
    deliver(again, nothing)
    assert firing(raised) == want
    assert "read back from ClickHouse" in caplog.text
    # the same message delivered again (a rebalance before its offset was committed) is not applied twice
    before = len(raised)
    for partition, message in router.messages(again, nothing, range(PARTITIONS), ()):
        raised.extend(owners[partition % 2].take(partition, offset[partition] - 1, message, sink.read))
    assert len(raised) == before
