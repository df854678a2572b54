"""Partials: what a batch of stored calls adds to the detectors, per event-time minute, split by the key's owner.

Every detector counts a batch at once (``prepare``: Arrow kernels) into per-minute rows keyed by what
it judges (a feature's spend, a model's latency buckets, a provider's errors, a session's calls);
then takes them a minute at a time (``observe``). Those rows are the partials: a worker that stores a
batch computes them, splits them by the owner of each row's key (:mod:`streams.detectors.owners`) and
sends each owner its share through ``spendstream.detector-partials``; the owner feeds its own
:class:`~streams.detectors.engine.Detectors` with them, as one worker would feed its own.

Each minute also carries the clock (:data:`CLOCK`): per data mode and source partition of
``llm.calls``, the latest event time the batch reached in it. Every owner takes the clock of every
batch, so its detectors' event time (the least of the source partitions' latest times) is the one a
single worker reading every partition would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.detectors import calls as c
from streams.detectors.owners import EVERY_OWNER
from streams.detectors.owners import SESSIONS as SESSIONS_OWNED

CLOCK = "clock"
"""(data mode, source partition, latest event time in epoch seconds) of the calls of a minute."""
SPEND = "spend"
"""(data mode, dimension, key, usd)"""
LATENCY = "latency"
"""(metric, data mode, dimension, key, bucket, successful calls)"""
ERRORS = "errors"
"""(data mode, dimension, key, model calls, failures, retries)"""
PROMPTS = "prompts"
"""(data mode, feature, prompt version, first ts, model calls, cost, tokens)"""
SESSIONS = "sessions"
"""(data mode, dimension, session, first agent, first feature, first and last ts, calls, tool calls, tokens, cost)"""
TOOLS = "tools"
"""(data mode, dimension, session, tool name) of each tool call, in time order."""
PROMPT_HASHES = "prompt_hashes"
"""(data mode, dimension, session, prompt hash) of each first attempt with a prompt hash."""
TOOL_ARGS = "tool_args"
"""(data mode, dimension, session, tool name, args hash) of each first attempt of a tool call with an args hash.

A kind of its own, not a column more of :data:`TOOLS`: an owner of the version before it ignores it,
and one of this version given partials without it counts no repeated arguments from them."""

_FORMAT = 1

Minute = dict[str, list[c.Row]]
"""One event-time minute's rows, per kind of partial (:data:`SPEND`, :data:`LATENCY` ...)."""
Owner = Callable[[str, str], int]
"""The partition owning a key of a dimension (``owners.Owners``)."""


@dataclass(slots=True)
class Partials:
    """Per event-time minute (epoch minutes), the rows of each kind of partial."""

    minutes: dict[int, Minute] = field(default_factory=dict)

    def add(self, kind: str, per_minute: dict[int, list[c.Row]]) -> None:
        """Add a detector's rows, per minute (a ``prepare``'s answer)."""
        for minute, rows in per_minute.items():
            if rows:
                self.minutes.setdefault(minute, {}).setdefault(kind, []).extend(rows)

    def chunks(self, max_rows: int) -> list[Partials]:
        """The same rows in pieces of about ``max_rows`` rows at most, in time order (a message has a size limit).

        A minute may be cut between two pieces: each piece then carries its clock, and a minute's
        sessions come before its tool calls and prompts, so a piece never names a session not seen yet.
        """
        if sum(len(rows) for kinds in self.minutes.values() for rows in kinds.values()) <= max_rows:
            return [self]
        pieces: list[Partials] = [Partials()]
        rows_in = 0

        def part_of(minute: int, clock: list[c.Row]) -> Minute:
            nonlocal rows_in
            if rows_in >= max_rows:
                pieces.append(Partials())
                rows_in = 0
            part = pieces[-1].minutes.get(minute)
            if part is None:
                part = pieces[-1].minutes[minute] = {CLOCK: clock} if clock else {}
                rows_in += len(clock)
            return part

        for minute in sorted(self.minutes):
            kinds = self.minutes[minute]
            clock = kinds.get(CLOCK, [])
            part_of(minute, clock)  # every minute is in a piece, with its clock
            for kind in _ORDER:
                rows = kinds.get(kind, [])
                start = 0
                while start < len(rows):
                    part = part_of(minute, clock)
                    taken = rows[start : start + max(1, max_rows - rows_in)]
                    part.setdefault(kind, []).extend(taken)
                    start += len(taken)
                    rows_in += len(taken)
        return pieces

    def split(self, owner: Owner, partitions: int) -> list[Partials]:
        """One :class:`Partials` per partition, each with the rows of the keys it owns and the whole clock."""
        shares = [Partials() for _ in range(partitions)]
        for minute, kinds in self.minutes.items():
            parts: list[Minute] = []
            for share in shares:
                part = share.minutes[minute] = {}
                clock = kinds.get(CLOCK)
                if clock:
                    part[CLOCK] = clock
                parts.append(part)
            for kind, rows in kinds.items():
                if kind == CLOCK:
                    continue
                route = _ROUTES[kind]
                for row in rows:
                    to = route(row, owner)
                    if to == EVERY_OWNER:
                        for part in parts:
                            part.setdefault(kind, []).append(row)
                    else:
                        parts[to].setdefault(kind, []).append(row)
        return shares


def _spend(row: c.Row, owner: Owner) -> int:
    return owner(row[1], row[2])


def _window(row: c.Row, owner: Owner) -> int:
    return owner(row[2], row[3])


def _errors(row: c.Row, owner: Owner) -> int:
    return owner(row[1], row[2])


def _prompts(row: c.Row, owner: Owner) -> int:
    return owner("feature", row[1])


def _sessions(row: c.Row, owner: Owner) -> int:
    return owner(SESSIONS_OWNED, "")


_ORDER = (SESSIONS, TOOLS, PROMPT_HASHES, TOOL_ARGS, LATENCY, ERRORS, SPEND, PROMPTS)
"""The kinds as a piece of partials takes them (see :meth:`Partials.chunks`)."""

_ROUTES: dict[str, Callable[[c.Row, Owner], int]] = {
    SPEND: _spend, LATENCY: _window, ERRORS: _errors, PROMPTS: _prompts,
    SESSIONS: _sessions, TOOLS: _sessions, PROMPT_HASHES: _sessions, TOOL_ARGS: _sessions,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PartialsMessage:
    """One owner's share of a stored batch, as it travels on ``spendstream.detector-partials``.

    Besides the rows: when it was sent (wall clock, after ClickHouse confirmed the batch), the source
    partitions of ``llm.calls`` the sender reads and those of them with records not read yet (they
    hold the owner's clock back, as in ``Detectors._advance``), and per source partition the offsets
    of the first and the last call the batch stored. ``redelivered``: per source partition, the offsets of
    calls the batch found already stored (Kafka delivered them again, or a client sent them twice), and
    ``redelivered_ts`` their first and last ``ts`` (epoch ms): a worker that stored calls and died before
    sending their partials left them unsent, and the owner reads those calls back from ClickHouse.
    """

    partials: Partials
    sent: float
    reads: tuple[int, ...] = ()
    lagging: tuple[int, ...] = ()
    stored: dict[int, tuple[int, int]] = field(default_factory=dict)
    redelivered: dict[int, list[int]] = field(default_factory=dict)
    redelivered_ts: tuple[int, int] = (0, 0)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "format": _FORMAT,
                "sent": self.sent,
                "reads": self.reads,
                "lagging": self.lagging,
                "stored": {str(p): list(span) for p, span in self.stored.items()},
                "redelivered": {str(p): offsets for p, offsets in self.redelivered.items()},
                "redelivered_ts": self.redelivered_ts,
                "minutes": {str(m): kinds for m, kinds in self.partials.minutes.items()},
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> PartialsMessage:
        """Raises:
        ValueError: not a partials message of this format (another producer's record on the topic).
        """
        try:
            data: dict[str, Any] = orjson.loads(raw)
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this worker reads format {_FORMAT}")
            minutes = {int(m): kinds for m, kinds in data["minutes"].items()}
            return cls(
                Partials(minutes),
                float(data["sent"]),
                tuple(data["reads"]),
                tuple(data["lagging"]),
                {int(p): (int(span[0]), int(span[1])) for p, span in data["stored"].items()},
                {int(p): [int(o) for o in offsets] for p, offsets in data["redelivered"].items()},
                (int(data["redelivered_ts"][0]), int(data["redelivered_ts"][1])),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"not a detector partials message ({exc!r})") from exc
