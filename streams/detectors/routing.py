"""The ingest side of detector ownership: a stored batch's partials, one message per owning partition."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from streams.detectors.engine import Detectors
from streams.detectors.owners import Owners
from streams.detectors.partials import Partials, PartialsMessage

MAX_ROWS = 2000
"""Rows of partials in one message at most: about 400 KB, under Kafka's 1 MB a message."""
_POSITION = 1 << 40
"""Offsets stay below this: (source partition, offset) is one integer, ``partition * _POSITION + offset``."""


class PartialsRouter:
    """Counts stored calls into partials and splits them among the partitions of ``spendstream.detector-partials``.

    Args:
        counter: detectors whose ``prepare`` counts the calls (configured as the owners' are; their own
            state is never used).
        partitions: partitions of ``spendstream.detector-partials``.
    """

    def __init__(self, counter: Detectors, partitions: int) -> None:
        self._counter = counter
        self.partitions = partitions
        self._owners = Owners(partitions)

    def messages(
        self, read: pa.Table | None, stored: pa.Table, reads: Iterable[int], lagging: Iterable[int]
    ) -> list[tuple[int, PartialsMessage]]:
        """The messages of each partition (its share and the clock, in pieces of :data:`MAX_ROWS` rows), for
        the calls ``stored`` of the calls ``read``; none when the batch stored nothing and found nothing stored.
        """
        spans = _spans(stored)
        redelivered, first_last = _redelivered(read, stored) if read is not None else ({}, (0, 0))
        if not spans and not redelivered:
            return []
        counted = self._counter.prepare(stored) if stored.num_rows else Partials()
        sent = time.time()
        reading, behind = tuple(sorted(set(reads))), tuple(sorted(set(lagging)))
        messages = []
        for partition, share in enumerate(counted.split(self._owners, self.partitions)):
            for n, piece in enumerate(share.chunks(MAX_ROWS)):
                # the calls found stored already are read back once, by the first piece
                again, again_ts = (redelivered, first_last) if n == 0 else ({}, (0, 0))
                messages.append((partition, PartialsMessage(piece, sent, reading, behind, spans, again, again_ts)))
        return messages


def _spans(calls: pa.Table) -> dict[int, tuple[int, int]]:
    """Per source partition, the first and last offsets of ``calls``."""
    if calls.num_rows == 0:
        return {}
    grouped = calls.group_by("source_partition").aggregate([("source_offset", "min"), ("source_offset", "max")])
    return {
        int(p): (int(first), int(last))
        for p, first, last in zip(
            grouped.column("source_partition").to_pylist(),
            grouped.column("source_offset_min").to_pylist(),
            grouped.column("source_offset_max").to_pylist(),
            strict=True,
        )
    }


def _positions(calls: pa.Table) -> pa.Array:
    partition = pc.cast(calls.column("source_partition"), pa.int64())
    return pc.add(pc.multiply(partition, _POSITION), pc.cast(calls.column("source_offset"), pa.int64()))


def _redelivered(read: pa.Table, stored: pa.Table) -> tuple[dict[int, list[int]], tuple[int, int]]:
    """Per source partition, the offsets of valid calls ``read`` that were not ``stored`` (already stored before),
    and their first and last ``ts`` in epoch milliseconds."""
    if read.num_rows <= stored.num_rows:
        return {}, (0, 0)
    left = read.filter(pc.invert(pc.is_in(_positions(read), value_set=_positions(stored))))
    if left.num_rows == 0:
        return {}, (0, 0)
    found: dict[int, list[int]] = {}
    for partition, offset in zip(
        left.column("source_partition").to_pylist(), left.column("source_offset").to_pylist(), strict=True
    ):
        found.setdefault(int(partition), []).append(int(offset))
    ms = pc.cast(left.column("ts"), pa.int64())
    bounds = pc.min_max(ms)
    return found, (int(bounds["min"].as_py()), int(bounds["max"].as_py()))
