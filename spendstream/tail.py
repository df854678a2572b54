"""The tail: records of the input topics that the worker has not committed, kept on disk across a broker restart.

The embedded broker keeps its log in memory. Before it stops, the records it acknowledged on
``llm.calls`` and ``llm.outcomes`` past the worker's committed offsets are written under
``SPENDSTREAM_HOME/broker-tail/`` (fsynced, then renamed into place), and the next ``spendstream up``
produces them again before it accepts new events. A record the worker had stored but not yet
committed comes back too: the sink drops an event_id it already holds.

A file holds one record a line: ``{"topic", "partition", "key", "value", "headers", "timestamp"}``,
bytes in base64.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, Message, Producer, TopicPartition

from spendstream.exceptions import StackError

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    line: bytes
    """The record as a line of a tail file."""


def committed(
    bootstrap: str, group: str, partitions: list[tuple[str, int]], timeout: float = 5.0
) -> dict[tuple[str, int], int]:
    """The group's committed offset of each partition (-1: none yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): (-1 if tp.offset == OFFSET_INVALID else tp.offset) for tp in found}


def read(bootstrap: str, group: str, topics: list[str], timeout: float = 10.0) -> list[Record]:
    """Every record of ``topics`` past the group's committed offsets, up to the end of each partition.

    The end is where a fetch finds no more (tansu 0.6.0 answers ListOffsets for the latest offset
    with the last batch's base offset + 1, so that is not asked).

    Raises:
        StackError: the broker did not give every record within ``timeout``.
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
         "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024,
         "fetch.wait.max.ms": 10}
    )  # fmt: skip
    records: list[Record] = []
    try:
        metadata = consumer.list_topics(timeout=timeout)
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            if topic in metadata.topics
            for partition in sorted(metadata.topics[topic].partitions)
        ]
        if not partitions:
            return []
        consumer.assign(consumer.committed(partitions, timeout=timeout))  # no commit yet: from the start
        reading = {(tp.topic, tp.partition) for tp in partitions}
        deadline = time.monotonic() + timeout
        while reading:
            if time.monotonic() > deadline:
                raise StackError(
                    f"the broker did not give the records past the worker's commits within {timeout:.0f}s",
                    f"{len(records)} were read; the rest are lost with it (see the broker log)",
                )
            for message in consumer.consume(10_000, 0.2):
                error = message.error()
                where = (message.topic() or "", message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        reading.discard(where)
                    continue
                records.append(Record(where[0], where[1], message.offset() or 0, _line(message)))
    finally:
        consumer.close()
    return records


def save(records: list[Record], directory: Path) -> int:
    """Write ``records`` to a new tail file (fsynced, then renamed into place); how many."""
    if not records:
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{time.time_ns()}{SUFFIX}"
    partial = final.with_suffix(".partial")
    with partial.open("wb") as out:
        out.write(b"".join(record.line for record in records))
        out.flush()
        os.fsync(out.fileno())
    partial.rename(final)
    _fsync_dir(directory)
    return len(records)


def replay(bootstrap: str, directory: Path, client_id: str, timeout: float = 30.0) -> int:
    """Produce every saved record again, to its topic and partition; remove each file once all of it is acknowledged.

    Returns:
        how many records were produced.

    Raises:
        StackError: the broker refused or did not acknowledge a record (the files are kept).
    """
    files = sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []
    for partial in directory.glob("*.partial") if directory.is_dir() else []:
        partial.unlink()  # a save cut short: the broker it came from still had those records when it died
    if not files:
        return 0
    # not idempotent, as the SDK's emitter: librdkafka takes about 0.5 s to set that up, all of it on
    # the path of a restart; one request in flight keeps each partition's order, and a record sent
    # twice on a retry is dropped by the pipeline as a duplicate
    producer = Producer(
        {"bootstrap.servers": bootstrap, "client.id": client_id, "acks": "all", "enable.idempotence": False,
         "max.in.flight.requests.per.connection": 1, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000}
    )  # fmt: skip
    failures: list[str] = []

    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            failures.append(str(error))

    total = 0
    for path in files:
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            record = orjson.loads(line)
            producer.produce(
                record["topic"],
                _bytes(record["value"]),
                _bytes(record["key"]),
                partition=record["partition"],
                headers=[(name, _bytes(value)) for name, value in record["headers"]] or None,
                timestamp=record["timestamp"] or 0,
                on_delivery=delivered,
            )
            total += 1
            producer.poll(0)
    left = producer.flush(timeout)
    if left or failures:
        raise StackError(
            f"could not produce again {left + len(failures)} of the {total} records saved in {directory}"
            + (f" ({failures[0]})" if failures else ""),
            "they are kept there and produced at the next start; see the broker log",
        )
    for path in files:
        path.unlink()
    _fsync_dir(directory)
    return total


def _line(message: Message) -> bytes:
    _, timestamp = message.timestamp()
    record: dict[str, Any] = {
        "topic": message.topic(),
        "partition": message.partition(),
        "key": _text(message.key()),
        "value": _text(message.value()),
        "headers": [[header[0], _text(header[1])] for header in message.headers() or []],
        "timestamp": timestamp if timestamp and timestamp > 0 else None,
    }
    return orjson.dumps(record) + b"\n"


def _text(data: bytes | str | None) -> str | None:
    if data is None:
        return None
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
