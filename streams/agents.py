"""The agents of the Faust app.

Acknowledgement discipline: Faust commits the offsets of acknowledged events on a timer, and an
agent that raises acknowledges what it was handling. So the ingest agent takes events without
acknowledging them (``streams.batching.take_chunks``), never lets an exception escape, and
acknowledges a batch only after ClickHouse confirmed it, rejected events included, and the broker took
the detector partials of its calls (``streams.detector_agent``). Their copies in
the dead-letter topic are sent after that, once, and never waited on (see :func:`publish_dead_letters`):
no record, whatever its size or content, can stop the stream or a shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import TP, EventT, StreamT

from schemas.alert import Alert
from sinks.batch import CallRows, Rejection, alert_row
from sinks.exceptions import ClickHouseTransientError
from sinks.sink import ClickHouseSink, FlushResult, StoredCalls
from streams.backoff import Backoff
from streams.batching import RecordChunk, lagging, take_chunks
from streams.budget_agent import partition_of
from streams.budgets import Budgets
from streams.detectors.routing import PartialsRouter
from streams.ingest import MAX_EVENT_BYTES, Ingestor, IngestResult, RawEvent
from streams.outcomes import OutcomeIngestor
from streams.unpriced import UnpricedModelDetector

logger = logging.getLogger(__name__)


def register_ingest(
    app: faust.App,
    calls: faust.TopicT,
    dlq: faust.TopicT,
    alerts: faust.TopicT,
    ingestor: Ingestor,
    sink: ClickHouseSink,
    max_chunks: int,
    batch_seconds: float,
    partials: PartialsRouting | None = None,
    spends: SpendRouting | None = None,
    max_raw_bytes: int = MAX_EVENT_BYTES,
) -> Any:
    """Register the agent that validates, prices and stores every call event.

    The topic's records arrive in :class:`RecordChunk` values (see ``streams.batching``); the agent
    takes up to ``max_chunks`` of them, or what came within ``batch_seconds``, as one batch. Three
    stages overlap: while one batch is judged (detectors, budget spends, alerts) and acknowledged,
    the next is written to ClickHouse and the one after it validated and priced. Each stage takes
    one batch at a time, in order: a batch's duplicate check sees every batch written before it,
    and the detectors see the batches in the order they were stored.

    The calls a batch stored (a redelivered duplicate is not counted twice) are counted into detector
    partials once ClickHouse confirmed them, and each owner of their keys gets its share (``partials``,
    see ``streams.detector_agent``) before the batch is acknowledged; so do the spends of those calls,
    to the budget agent (``spends``), and ``unpriced_model`` alerts, published and stored.

    A rejected event is kept, in ``rejected_events`` and in the dead-letter topic, with at most its
    first ``max_raw_bytes`` bytes and its size: given the worker's ``max_event_bytes``, only a
    record refused as oversize is ever cut.
    """

    unpriced = UnpricedModelDetector()
    raise_alerts = alert_raiser(alerts, sink)
    read: dict[TP, int] = {}
    """The last offset the agent read, per partition of the calls topic."""
    finishing: asyncio.Task[None] | None = None
    """The batch last written, being judged and acknowledged while the next one is written."""
    acknowledging: deque[asyncio.Task[None]] = deque()
    """Batches judged whose partials the broker has not acknowledged yet: acknowledged once it has."""

    async def write(batch: list[EventT[RecordChunk]], result: IngestResult) -> None:
        nonlocal finishing
        rejected = [r.cut(max_raw_bytes) for r in result.rejected]
        sink.add(result.calls, rejected)
        await flush_until_written(sink)
        await publish_dead_letters(dlq, rejected)
        stored = sink.take_stored()
        if finishing is not None:
            await finishing  # one batch judged at a time, in order
        finishing = asyncio.create_task(finish(batch, result, stored))

    async def finish(batch: list[EventT[RecordChunk]], result: IngestResult, stored: StoredCalls) -> None:
        if spends is not None and spends.budgets:
            routed = spends.budgets.spends_of(stored.rows, time.time())
            await send_until_acked(spends.topic, [
                (s.scope.encode(), s.encode(), None, partition_of(s.scope, spends.partitions)) for s in routed
            ])  # fmt: skip
        delivered: Awaitable[None] | None = None
        if partials is not None:
            reads = [tp.partition for tp in app.consumer.assignment() if tp.topic == calls_topic]
            # in a thread: the event loop goes on fetching, and the next batch's flush is not held up
            messages = await asyncio.to_thread(
                partials.router.messages, result.calls.columns, stored.columns, reads, lagging(app.consumer, read)
            )
            delivered = await send_in_order(partials.topic, [
                (None, message.encode(), None, partition) for partition, message in messages
            ])  # fmt: skip
        await raise_alerts(unpriced.check(result.unpriced_calls))
        if delivered is None:
            for event in batch:
                event.ack()
            return
        # the batch is acknowledged once the broker has its partials; the next batch goes on meanwhile
        while len(acknowledging) >= MAX_BATCHES_AWAITING_ACKS:
            await acknowledging.popleft()
        acknowledging.append(asyncio.create_task(_ack_when(delivered, batch)))

    calls_topic = calls.get_topic_name()

    @app.agent(calls, name="ingest")
    async def ingest(stream: StreamT[RecordChunk]) -> None:
        writing: asyncio.Task[None] | None = None
        try:
            async for batch in take_chunks(stream, max_chunks, batch_seconds):
                for event in batch:
                    chunk = cast(RecordChunk, event.value)
                    read[TP(chunk.topic, chunk.partition)] = chunk.offsets[-1]
                result = await _process(ingestor, batch)
                if writing is not None:
                    await writing
                writing = asyncio.create_task(write(batch, result))
        finally:
            # A batch still being written or judged stays unacknowledged: Kafka delivers it again, and
            # the sink's duplicate check keeps whatever part of it was stored from counting twice.
            for task in (writing, finishing, *acknowledging):
                if task is not None and not task.done():
                    task.cancel()

    return ingest


@dataclass(frozen=True, slots=True)
class PartialsRouting:
    """Where the ingest agent sends the detector partials of stored calls: ``spendstream.detector-partials``."""

    topic: faust.TopicT
    router: PartialsRouter


@dataclass(frozen=True, slots=True)
class SpendRouting:
    """Where the ingest agent sends the spends of stored calls: the budgets' repartition topic."""

    topic: faust.TopicT
    budgets: Budgets
    partitions: int


def alert_raiser(alerts: faust.TopicT, sink: ClickHouseSink) -> Callable[[list[Alert]], Awaitable[None]]:
    """Publish alerts to ``spendstream.alerts`` and store them in ``alerts``: the one path of every alert."""

    async def raise_alerts(raised: list[Alert]) -> None:
        if raised:
            await _publish_alerts(alerts, raised)
            sink.add(CallRows(), [], alerts=[alert_row(a) for a in raised])
            await flush_until_written(sink)

    return raise_alerts


def register_outcomes(
    app: faust.App,
    outcomes: faust.TopicT,
    dlq: faust.TopicT,
    ingestor: OutcomeIngestor,
    sink: ClickHouseSink,
    max_chunks: int,
    batch_seconds: float,
    max_raw_bytes: int = MAX_EVENT_BYTES,
) -> Any:
    """Register the agent that stores outcome events, with the same acknowledgement discipline."""

    @app.agent(outcomes, name="outcomes")
    async def store_outcomes(stream: StreamT[RecordChunk]) -> None:
        async for batch in take_chunks(stream, max_chunks, batch_seconds):
            result = ingestor.process(_raw_events(batch))
            rejected = [r.cut(max_raw_bytes) for r in result.rejected]
            sink.add(CallRows(), rejected, result.rows)
            await flush_until_written(sink)
            await publish_dead_letters(dlq, rejected)
            for event in batch:
                event.ack()

    return store_outcomes


async def _process(ingestor: Ingestor, batch: list[EventT[RecordChunk]]) -> IngestResult:
    """Validate and price a batch a chunk at a time, letting the event loop run in between.

    The loop also delivers the records fetched meanwhile: were a batch processed in one go, the next
    one would only start to arrive once it is done, and the agent would wait for it.
    """
    parts = []
    for event in batch:
        parts.append(ingestor.process(_raw_events([event])))
        await asyncio.sleep(0)
    return IngestResult.combined(parts)


def _raw_events(batch: list[EventT[RecordChunk]]) -> Iterator[RawEvent]:
    for event in batch:
        chunk = cast(RecordChunk, event.value)
        if not chunk.timestamps:
            for value, offset in zip(chunk.values, chunk.offsets, strict=True):
                yield RawEvent(value, chunk.partition, offset)
            continue
        for value, offset, timestamp in zip(chunk.values, chunk.offsets, chunk.timestamps, strict=True):
            yield RawEvent(value, chunk.partition, offset, timestamp)


# (key, value, headers, partition or None for the key's) of one Kafka message
Message = tuple[bytes | None, bytes, dict[str, bytes] | None, int | None]


MAX_BATCHES_AWAITING_ACKS = 4
"""Batches whose partials may wait for the broker's acknowledgement while the next ones are judged."""


async def _ack_when(delivered: Awaitable[None], batch: list[EventT[RecordChunk]]) -> None:
    await delivered
    for event in batch:
        event.ack()


async def send_in_order(topic: faust.TopicT, messages: list[Message]) -> Awaitable[None]:
    """Send ``messages`` (in order, after those sent before) without waiting: returns what waits for the acks.

    Messages the broker did not take are sent again, with backoff, until it does (see
    :func:`send_until_acked`); nothing is sent twice that the broker acknowledged.
    """
    sent: list[tuple[Message, Awaitable[Any]]] = []
    failed: list[Message] = []
    for message in messages:
        key, value, headers, partition = message
        try:
            sent.append((message, await topic.send(key=key, value=value, headers=headers, partition=partition)))
        except Exception:
            failed.append(message)

    async def acked() -> None:
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        again = [m for (m, _), r in zip(sent, results, strict=True) if isinstance(r, BaseException)] + failed
        if again:
            await send_until_acked(topic, again)

    return acked()


async def send_until_acked(topic: faust.TopicT, messages: list[Message]) -> None:
    """Send ``messages`` and wait for the broker's acks; while the broker is down, retry with backoff.

    The caller's events stay unacknowledged meanwhile, so nothing is lost if the worker stops.
    """
    backoff = Backoff()
    while messages:
        try:
            futures = [
                await topic.send(key=key, value=value, headers=headers, partition=partition)
                for key, value, headers, partition in messages
            ]
            await asyncio.gather(*futures)
            return
        except Exception as exc:
            delay = backoff.next()
            logger.error("topic %s unavailable (%s); retrying in %.1fs", topic.get_topic_name(), exc, delay)
            await asyncio.sleep(delay)


DEAD_LETTER_WAIT = 5.0
"""Longest the agents wait for the dead-letter topic to take a batch's copies, in seconds."""
_RECORD_OVERHEAD = 512
"""Bytes a Kafka record batch of one message adds to its value and headers (``truncated`` and
``original_size`` included), with room to spare."""


async def publish_dead_letters(dlq: faust.TopicT, rejected: list[Rejection]) -> None:
    """Send a copy of each rejected event to the dead-letter topic, with why in the headers; never wait on it.

    Called once the rejections are stored in ``rejected_events``: a copy the topic does not take
    within :data:`DEAD_LETTER_WAIT` (the broker is down, the record too large for it, anything else)
    is logged and left out, never retried, so it cannot hold up the stream or a shutdown. A copy
    larger than the worker's producer may send is cut to fit; like one cut before (see
    :meth:`Rejection.cut`), it carries the headers ``truncated`` and ``original_size``.
    """
    if not rejected:
        return
    try:
        failed = await asyncio.wait_for(_send_dead_letters(dlq, rejected), DEAD_LETTER_WAIT)
    except Exception as exc:  # a timeout, most likely: the broker did not answer
        failed = [(r, exc) for r in rejected]
    for r, why in failed[:3]:
        logger.error(
            "the dead-letter topic %s did not take the rejected event from %s[%d]@%d (%r); it is kept in "
            "rejected_events, not sent again",
            dlq.get_topic_name(), r.topic, r.partition, r.offset, why,
        )  # fmt: skip
    if len(failed) > 3:
        logger.error("... and %d more rejected events, all kept in rejected_events", len(failed) - 3)


async def _send_dead_letters(dlq: faust.TopicT, rejected: list[Rejection]) -> list[tuple[Rejection, BaseException]]:
    """Send the copies, then wait for the broker's acks; return the rejections whose copy failed, and why."""
    limit = int(dlq.app.conf.producer_max_request_size)
    sent: list[tuple[Rejection, Awaitable[Any]]] = []
    failed: list[tuple[Rejection, BaseException]] = []
    for r in rejected:
        headers = {
            "reason": r.reason.encode()[:4096],
            "error_kind": r.error_kind.encode(),
            "source_topic": r.topic.encode(),
            "source_partition": str(r.partition).encode(),
            "source_offset": str(r.offset).encode(),
        }
        room = limit - _RECORD_OVERHEAD - sum(len(k) + len(v) for k, v in headers.items())
        copy = r.cut(max(0, room))
        if copy.truncated:
            headers["truncated"] = b"true"
            headers["original_size"] = str(copy.size).encode()
        try:
            sent.append((r, await dlq.send(value=copy.raw, headers=headers)))
        except Exception as exc:
            failed.append((r, exc))
    acks = await asyncio.gather(*(ack for _, ack in sent), return_exceptions=True)
    failed += [(r, ack) for (r, _), ack in zip(sent, acks, strict=True) if isinstance(ack, BaseException)]
    return failed


async def _publish_alerts(topic: faust.TopicT, alerts: list[Alert]) -> None:
    """Send alerts to ``spendstream.alerts``, keyed by dedup key."""
    await send_until_acked(topic, [(a.dedup_key.encode(), a.model_dump_json().encode(), None, None) for a in alerts])
    for alert in alerts:
        logger.warning("alert %s: %s", alert.kind, alert.message)


async def flush_until_written(sink: ClickHouseSink) -> FlushResult:
    """Flush the sink, retrying with backoff for as long as ClickHouse fails; the stream waits meanwhile."""
    backoff = Backoff()
    while True:
        try:
            result = await asyncio.to_thread(sink.flush)
        except ClickHouseTransientError as exc:
            delay = backoff.next()
            logger.warning("%s (in %.1fs)", exc, delay)
        except Exception as exc:  # terminal: say what to do, keep the events unacknowledged, try again slowly
            delay = backoff.next(slow=True)
            logger.error("%s; the pipeline is paused and retries in %.0fs", exc, delay)
        else:
            if result.duplicates:
                logger.info("skipped %d events already stored (redelivered)", result.duplicates)
            return result
        await asyncio.sleep(delay)
