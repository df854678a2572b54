"""A Faust transport that hands the records of a fetch to agents as chunks, not one by one.

faust-streaming turns every Kafka record into a message, an event and a trip through the stream's
queue, and its fetcher awaits each one: a bare agent tops out near 6,000 records/s on 2 cores. For
the topics named in ``batched_topics`` this transport delivers each partition's fetched records as
one message per chunk, whose value is a :class:`RecordChunk`. Offsets stay exact: the records of a
chunk before its last are registered as a gap, so Faust commits past them only once the chunk's
message (carrying the last offset) is acknowledged.

It also asks the broker to hold a fetch for new records at most :data:`FETCH_MAX_WAIT_MS`, not
Faust's 1.5 s (see :class:`PromptFetchThread`). Agents take the chunks in batches with
:func:`take_chunks`, which leaves acknowledging them to the agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import aiokafka
import faust
from faust.tables import TableManager
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, ChannelT, ConsumerT, EventT, StreamT, TransportT
from faust.types.tuples import ConsumerMessage
from mode import Service
from mode.utils.futures import notify

FETCH_MAX_WAIT_MS = 100
"""Longest the broker holds a fetch open waiting for new records (Faust asks for 1,500 ms)."""


class PromptFetchThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose fetches wait for new records at most :data:`FETCH_MAX_WAIT_MS`.

    aiokafka keeps one fetch in flight per broker, for the partitions whose fetched records are all
    consumed. When those partitions are idle (a burst has ended on them, or traffic is skewed), the
    broker holds that fetch for the whole wait, and the records of every other partition on the
    broker wait behind it: with Faust's 1.5 s, a worker reading one broker stalled for 1.5 s at a
    time (the embedded broker holds every partition). An idle worker now sends ten empty fetches a
    second instead of one every 1.5 s.
    """

    def _create_worker_consumer(self, transport: aiokafka_driver.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer


@dataclass(frozen=True, slots=True)
class RecordChunk:
    """Consecutive records of one partition, in offset order."""

    topic: str
    partition: int
    offsets: Sequence[int]
    values: Sequence[bytes | None]
    timestamps: Sequence[int | None] = ()
    """The records' Kafka timestamps in epoch milliseconds (``None``: a record without one); empty: not known."""


class ChunkingConsumer(aiokafka_driver.Consumer):
    """The aiokafka consumer, delivering the records of ``batched_topics`` in chunks."""

    batched_topics: ClassVar[frozenset[str]] = frozenset()
    chunk_records: ClassVar[int] = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delivered: dict[TP, tuple[int, int]] = {}  # last offset delivered, consumer generation

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return PromptFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        self._delivered.clear()
        await super().perform_seek()

    async def seek(self, partition: TP, offset: int) -> None:
        self._delivered.pop(partition, None)
        await super().seek(partition, offset)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - run by Faust's fetcher
        callback = self.callback
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    await self.perform_seek()
                    continue
                generation_id = self.app.consumer_generation_id
                for tp, tp_records in records.items():
                    if self.app.consumer_generation_id != generation_id or not self.flow_active:
                        break
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if tp.topic in self.batched_topics:
                        await self._deliver_chunks(tp, tp_records, callback)
                    else:
                        await self._deliver_each(tp, tp_records, callback)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _deliver_chunks(self, tp: TP, records: Sequence[Any], callback: Any) -> None:
        fresh = self._unread(tp, records)
        size = self.chunk_records
        for start in range(0, len(fresh), size):
            part = fresh[start : start + size]
            last = part[-1]
            gap_from = self._next_offset(tp, part[0].offset)
            if last.offset > gap_from:
                self._mark_gap(tp, gap_from, last.offset - 1)
            chunk = RecordChunk(
                tp.topic, tp.partition, [r.offset for r in part], [r.value for r in part], [r.timestamp for r in part]
            )
            message = ConsumerMessage(
                tp.topic,
                tp.partition,
                last.offset,
                last.timestamp / 1000.0 if last.timestamp is not None else time.time(),
                last.timestamp_type,
                [],
                None,
                chunk,  # type: ignore[arg-type]  # Faust passes the value through the raw codec untouched
                None,
                0,
                sum(r.serialized_value_size for r in part),
                tp,
                generation_id=self.app.consumer_generation_id,
            )
            await self.wait_first(callback(message), self.suspend_flow.wait())
            self._mark_read(tp, last.offset)

    async def _deliver_each(self, tp: TP, records: Sequence[Any], callback: Any) -> None:
        for record in self._unread(tp, records):
            gap_from = self._next_offset(tp, record.offset)
            if record.offset > gap_from and self.app.topics.acks_enabled_for(tp.topic):
                self._mark_gap(tp, gap_from, record.offset - 1)
            await self.wait_first(callback(self._to_message(tp, record)), self.suspend_flow.wait())
            self._mark_read(tp, record.offset)

    def _mark_gap(self, tp: TP, first: int, last: int) -> None:
        """Faust's ``_add_gap`` without its tree-wide ``merge_overlaps``: chunks' gaps never overlap."""
        committed = self._committed_offset[tp]
        if committed is not None:
            first = max(first, committed + 1)
        if first <= last:
            self._gap[tp].addi(first, last + 1)

    # Faust's read offset means "last record read" after a delivery but "next record to read" after a
    # seek (rebalance, restart): remember which offsets this consumer set, and in which consumer
    # generation, to tell them apart. When in doubt it reads a record again (the sink drops repeats)
    # rather than skip one.
    def _next_offset(self, tp: TP, default: int) -> int:
        read = self._read_offset[tp]
        if read is None:
            return default
        delivered_here = self._delivered.get(tp) == (read, self.app.consumer_generation_id)
        return read + 1 if delivered_here else read

    def _mark_read(self, tp: TP, offset: int) -> None:
        self._read_offset[tp] = offset
        self._delivered[tp] = (offset, self.app.consumer_generation_id)

    def _unread(self, tp: TP, records: Sequence[Any]) -> list[Any]:
        if not records:
            return []
        first = self._next_offset(tp, records[0].offset)
        return [r for r in records if r.offset >= first]


class ChunkingTransport(aiokafka_driver.Transport):
    Consumer: ClassVar[type[ConsumerT]] = ChunkingConsumer


STOP_WAIT_SECONDS = 5.0
"""How long a stopping worker waits for the events it took to be stored (see ``ChunkingApp``)."""


class PromptTableManager(TableManager):
    """Faust's table manager without the second it sleeps at start.

    Faust waits a second before it registers the tables' changelogs, in case an agent declares a
    table while starting. spendstream declares its tables when it builds the app, so the wait only
    delayed the consumer's subscription: a restarted worker read events a second later.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class ChunkingApp(faust.App):
    """A Faust app whose consumer delivers ``batched_topics`` in :class:`RecordChunk` messages.

    Its tables start without Faust's one-second wait (:class:`PromptTableManager`).
    """

    def __init__(self, *args: Any, batched_topics: frozenset[str], chunk_records: int, **kwargs: Any) -> None:
        consumer = type(
            "ChunkingConsumerFor",
            (ChunkingConsumer,),
            {"batched_topics": batched_topics, "chunk_records": chunk_records},
        )
        self._transport_class = type("ChunkingTransportFor", (ChunkingTransport,), {"Consumer": consumer})
        kwargs.setdefault("TableManager", PromptTableManager)
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        return cast(TransportT, self._transport_class(self.conf.broker_consumer, self))

    async def _consumer_wait_empty(self, consumer: ConsumerT, logger: Any) -> None:
        """Wait for the agents to acknowledge what they took; when stopping, ``STOP_WAIT_SECONDS`` at most.

        An agent acknowledges a batch once ClickHouse stored it; while ClickHouse is down it retries
        and acknowledges nothing, and Faust's stop waited for it for ever (a SIGTERM of the worker
        hung). What it never acknowledged is not committed: a stop that gives up on it loses
        nothing, the next start reads it again. A rebalance still waits for the batch in hand.
        """
        if not self.should_stop:
            await super()._consumer_wait_empty(consumer, logger)
            return
        # Faust's own wait cannot be bounded from outside: it swallows the cancellation of a timeout
        waiting = cast(Any, consumer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_SECONDS
        while waiting._unacked_messages:
            if loop.time() >= deadline:
                logger.warning(
                    "stopping with events not stored yet (ClickHouse did not take them within %.0f s): they are "
                    "not acknowledged, and the next start reads them again",
                    STOP_WAIT_SECONDS,
                )
                break
            await consumer.commit()
            await asyncio.sleep(0.05)
            waiting._clean_unacked_messages()
        await consumer.commit()


async def take_chunks(
    agent_stream: StreamT[RecordChunk], max_chunks: int, within: float
) -> AsyncIterator[list[EventT[RecordChunk]]]:
    """Batches of up to ``max_chunks`` chunk events, unacknowledged: Faust's ``noack_take``, and one rule more.

    As ``noack_take``, a batch is yielded when it is full or ``within`` seconds after the last one,
    and its events are left for the caller to acknowledge. The rule more: a batch that follows a full
    one is yielded as soon as it holds every record the broker has (the consumer caught up), without
    waiting out ``within``. After a burst, its last records are written at once instead of half a
    second later; at a steady rate batches are not full, so small inserts stay bounded to one per burst.
    """
    stream = cast("faust.Stream[RecordChunk]", agent_stream)
    buffer: list[EventT[RecordChunk]] = []
    last_offsets: dict[TP, int] = {}
    """The last offset buffered, per partition: behind the partition's highwater, more is coming."""
    full = asyncio.Event()
    consumed = asyncio.Event()
    after_full = False
    consuming: asyncio.Future[None] | None = None

    async def add_to_buffer(value: RecordChunk) -> RecordChunk:
        nonlocal consuming
        try:
            if consuming is not None:  # the caller is handling the last batch
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("a take buffer found no current event")
            buffer.append(event)
            last_offsets[TP(value.topic, value.partition)] = value.offsets[-1]
            if len(buffer) >= max_chunks:  # never more than max_chunks at once: wait for the batch's turn
                full.set()
                consumed.clear()
                await stream.wait(consumed)  # type: ignore[arg-type]  # mode annotates its own Event type
            elif after_full and not lagging(stream.app.consumer, last_offsets):
                full.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception(
                "a batch could not take a chunk of %s partition %d (%r): the stream stops; its events were "
                "not acknowledged, so Kafka delivers them again to the agent that reads them next",
                value.topic, value.partition, exc,
            )  # fmt: skip
            await stream.crash(exc)
        return value

    # As noack_take: the stream is drained in the background into the buffer, acks left to the caller.
    acks_enabled = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(cast("ChannelT[Any]", aiter(stream.channel)))
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(full, timeout=within)  # type: ignore[arg-type]
            if not buffer:
                continue
            after_full = len(buffer) >= max_chunks
            batch_done: asyncio.Future[None] = stream.loop.create_future()
            consuming = batch_done
            try:
                yield list(buffer)
            finally:
                buffer.clear()
                notify(batch_done)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = acks_enabled
        stream._processors.remove(add_to_buffer)


def lagging(consumer: ConsumerT, read: Mapping[TP, int]) -> frozenset[int]:
    """The partitions whose highwater is beyond the offset ``read`` last: they hold records not read yet."""
    behind = set()
    for tp, offset in read.items():
        try:
            end = consumer.highwater(tp)
        except Exception:  # not assigned any more, or not fetched yet: nothing known to wait for
            continue
        if end is not None and offset + 1 < end:
            behind.add(tp.partition)
    return frozenset(behind)
