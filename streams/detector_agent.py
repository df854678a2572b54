"""The detector agent: one owner per detector key, so several workers raise what one worker would.

Every worker stores the calls of its partitions of ``llm.calls``, counts them into partials
(``streams.detectors.partials``) and sends each partition of ``spendstream.detector-partials`` the
partials of the keys it owns (``streams.detectors.owners``), with the clock of the batch. This agent
keeps one :class:`~streams.detectors.engine.Detectors` per partition of that topic it holds, fed only
with that partition's messages: a feature's spend, a model's latency, a provider's errors and the
sessions are each judged in one place, with all of their calls, and the owner raises their alerts.

Ownership moves when the group rebalances. A worker given a partition builds its detectors from
ClickHouse, as one worker does at start (``streams.detectors.warmup``), and skips the messages that
were on the partition before it read (their calls were stored before they were sent, so the read
has them). A worker that stored calls and died before sending their partials left them unsent: the
worker that reads those calls again finds them stored and says so (``PartialsMessage.redelivered``),
and each owner that has not seen those offsets reads the calls back from ClickHouse.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
from clickhouse_connect.driver.client import Client
from faust.types import TP, EventT, StreamT

from schemas.alert import Alert
from schemas.config import DetectorsConfig
from sinks import call_block
from sinks.batch import LLM_CALL_COLUMNS
from sinks.sink import ClickHouseSink
from streams.backoff import Backoff
from streams.detectors.engine import Detectors
from streams.detectors.owners import Owners
from streams.detectors.partials import PartialsMessage
from streams.detectors.warmup import warm_up_owned

logger = logging.getLogger(__name__)

FILLED_KEPT = 64
"""Spans of calls read back from ClickHouse remembered per source partition: their own partials, sent late
by a worker that was slow rather than dead, are then skipped."""


@dataclass(slots=True)
class _Owned:
    """One partition's detectors and what it knows of the source partitions of ``llm.calls``."""

    detectors: Detectors
    skip_below: int
    """Messages at lower offsets of the partition were there when the warm-up read ClickHouse: it has them."""
    applied: dict[int, int]
    """Per source partition, the last offset of a call these detectors have (read at warm-up, or applied)."""
    lagging: dict[int, bool] = field(default_factory=dict)
    """Per source partition, whether its reader last said it had records not read yet."""
    filled: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """Per source partition, spans of offsets read back from ClickHouse (see :data:`FILLED_KEPT`)."""
    last_offset: int = -1
    last_sent: float = 0.0
    """The offset and the sending time of the last message applied: one delivered again (the group rebalanced
    before its offset was committed, and the partition stayed here) is not applied twice. A message at a lower
    offset sent later is new: the topic started afresh (an embedded broker restarted)."""


class DetectorOwner:
    """The detector agent's state: detectors per owned partition of ``spendstream.detector-partials``."""

    def __init__(self, config: DetectorsConfig, partitions: int) -> None:
        self.config = config
        self.partitions = partitions
        self._owners = Owners(partitions)
        self._counter = Detectors(config)
        """Counts calls read back from ClickHouse into partials (its own state is never used)."""
        self.owned: dict[int, _Owned] = {}
        self.assigned: set[int] = set()
        self.warming: asyncio.Future[list[Alert]] | None = None
        """The warm-up of partitions just given (started at assignment, before their first message)."""

    def assign(self, partitions: set[int]) -> None:
        """The partitions the group gave this worker: detectors of the others are dropped."""
        self.assigned = partitions
        for gone in set(self.owned) - partitions:
            del self.owned[gone]
            logger.info("detectors: partition %d went to another worker", gone)

    def warm_up(self, ends: dict[int, int], client: Client, database: str) -> list[Alert]:
        """Build the detectors of newly owned partitions from ClickHouse (``ends``: each one's end offset before
        the read); returns what they raise at once (an incident that resolved while nobody owned it)."""
        made = {partition: Detectors(self.config) for partition in ends}
        last_offsets = client.query(
            f"SELECT source_partition, max(source_offset) FROM `{database}`.llm_calls GROUP BY source_partition"
        ).result_rows
        warm_up_owned(made, self.partitions, client, database)
        alerts: list[Alert] = []
        for partition, detectors in made.items():
            if partition not in self.assigned:
                continue  # taken away while it was being built
            alerts += detectors.check()
            applied = {int(source): int(last) for source, last in last_offsets}
            self.owned[partition] = _Owned(detectors, ends[partition], applied)
        return alerts

    def take(self, partition: int, offset: int, message: PartialsMessage, read: _Reader) -> list[Alert]:
        """Apply one message of an owned partition (at ``offset``); returns the alerts raised.

        ``read`` runs a query on ClickHouse (calls read back whose partials never came).
        """
        owned = self.owned.get(partition)
        if owned is None or offset < owned.skip_below:
            return []
        if offset <= owned.last_offset and message.sent <= owned.last_sent:
            return []
        owned.last_offset, owned.last_sent = offset, max(owned.last_sent, message.sent)
        alerts: list[Alert] = []
        missing = {
            source: [o for o in offsets if o > owned.applied.get(source, -1)]
            for source, offsets in message.redelivered.items()
        }
        missing = {source: offsets for source, offsets in missing.items() if offsets}
        if missing:
            alerts += self._fill(partition, owned, missing, message.redelivered_ts, read)
        if message.stored and all(_within(span, owned.filled.get(s, [])) for s, span in message.stored.items()):
            return alerts  # its calls were read back from ClickHouse: they are counted
        for source in message.reads:
            owned.lagging[source] = source in message.lagging
        for source, (_, last) in message.stored.items():
            owned.applied[source] = max(owned.applied.get(source, -1), last)
        lagging = frozenset(source for source, behind in owned.lagging.items() if behind)
        alerts += owned.detectors.apply(message.partials, lagging)
        return alerts

    def _fill(
        self, partition: int, owned: _Owned, missing: dict[int, list[int]], ts: tuple[int, int], read: _Reader
    ) -> list[Alert]:
        """Read back the calls stored at ``missing`` offsets (their partials never came) and apply this partition's
        share of them."""

        def query(client: Client, database: str) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for source, offsets in missing.items():
                rows += [
                    tuple(row)
                    for row in client.query(
                        f"SELECT {', '.join(LLM_CALL_COLUMNS)} FROM `{database}`.llm_calls "
                        "WHERE ts BETWEEN fromUnixTimestamp64Milli(toInt64(%(first)s), 'UTC') "
                        "AND fromUnixTimestamp64Milli(toInt64(%(last)s), 'UTC') "
                        "AND source_partition = %(source)s AND source_offset IN %(offsets)s ORDER BY ts",
                        parameters={"first": ts[0] - 1000, "last": ts[1] + 1000, "source": source, "offsets": offsets},
                    ).result_rows
                ]
            return rows

        rows = [(row[0], _aware(row[1]), *row[2:]) for row in read(query)]
        for source, offsets in missing.items():
            spans = owned.filled.setdefault(source, [])
            spans.append((min(offsets), max(offsets)))
            del spans[:-FILLED_KEPT]
            owned.applied[source] = max(owned.applied.get(source, -1), max(offsets))
        if not rows:
            return []
        logger.warning(
            "detectors (partition %d): %d stored calls had no partials (their worker stopped before sending them); "
            "read back from ClickHouse",
            partition,
            len(rows),
        )
        share = self._counter.prepare(call_block.table(rows)).split(self._owners, self.partitions)[partition]
        return owned.detectors.apply(share, frozenset(s for s, behind in owned.lagging.items() if behind))


_Reader = Callable[[Callable[[Client, str], Any]], Any]
"""Runs a query function on the sink's connection (``ClickHouseSink.read``)."""


def _within(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(first <= span[0] and span[1] <= last for first, last in spans)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _after(before: Awaitable[list[Alert]] | None, then: Awaitable[list[Alert]]) -> list[Alert]:
    """The alerts of a warm-up started before (if any), then of ``then``: warm-ups run one at a time."""
    alerts = await before if before is not None else []
    return alerts + await then


def _warm_up(owner: DetectorOwner, ends: dict[int, int], client: Client, database: str) -> list[Alert]:
    return owner.warm_up(ends, client, database)


def register_detectors(
    app: faust.App,
    partials: faust.TopicT,
    owner: DetectorOwner,
    sink: ClickHouseSink,
    raise_alerts: Callable[[list[Alert]], Awaitable[None]],
) -> Any:
    """Register the detector agent on ``partials`` (``spendstream.detector-partials``).

    ``sink`` is read (warm-ups, calls read back) on a connection of its own (``ClickHouseSink.reader``).
    """
    topic = partials.get_topic_name()
    sink = sink.reader()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[TP], *, signal: Any, **kwargs: Any) -> None:
        owner.assign({tp.partition for tp in assigned if tp.topic == topic})
        new = owner.assigned - set(owner.owned)
        if new:  # built now, while the first batches are stored: their messages find the detectors ready
            before = owner.warming
            owner.warming = asyncio.ensure_future(_after(before, warm_up(new)))

    async def warm_up(partitions: set[int]) -> list[Alert]:
        backoff = Backoff()
        while True:
            try:
                highwaters = await app.consumer.highwaters(*(TP(topic, p) for p in partitions))
                ends = {tp.partition: int(end) for tp, end in highwaters.items()}
                return await asyncio.to_thread(sink.read, functools.partial(_warm_up, owner, ends))
            except Exception as exc:
                delay = backoff.next()
                logger.error(
                    "detectors cannot warm up partitions %s from ClickHouse (%s): check that it is reachable and "
                    "migrated (`spendstream migrate`); their partials wait, retrying in %.1fs",
                    sorted(partitions),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    def apply(messages: list[tuple[int, int, PartialsMessage]]) -> list[Alert]:
        alerts: list[Alert] = []
        for partition, offset, message in messages:
            alerts += owner.take(partition, offset, message, sink.read)
        alerts.sort(key=lambda a: a.ts)
        return alerts

    @app.agent(partials, name="detectors")
    async def detect(stream: StreamT[bytes]) -> None:
        async for events in stream.noack_take(2000, within=0.2):  # type: ignore[attr-defined]
            batch: list[EventT[bytes]] = list(events)
            messages: list[tuple[int, int, PartialsMessage]] = []
            for event in batch:
                try:
                    message = PartialsMessage.decode(event.value)
                    messages.append((event.message.partition, event.message.offset, message))
                except ValueError as exc:  # not one of ours: skip it, say so
                    logger.error("detector-partials: skipped a message that is not partials (%s)", exc)
            alerts: list[Alert] = []
            if owner.warming is not None:
                warming, owner.warming = owner.warming, None
                alerts += await warming
            new = {partition for partition, _, _ in messages if partition not in owner.owned}
            if new:  # given while this batch was taken
                alerts += await warm_up(new | (owner.assigned - set(owner.owned)))
            alerts += await asyncio.to_thread(apply, messages)
            await raise_alerts(alerts)
            for event in batch:
                event.ack()

    return detect
