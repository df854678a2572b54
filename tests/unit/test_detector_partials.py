"""Detector state owned per key: the owners of a batch's partials raise what one worker raises."""

from __future__ import annotations

import zlib
from datetime import timedelta

import orjson
import pyarrow as pa

from producers._args import args_hash
from producers.demo_incidents import LOOP_SESSION, SLOW_MODEL, SPIKE_FEATURE, DemoIncidents
from schemas.alert import Alert
from schemas.call_event import CallEvent
from schemas.config import DetectorsConfig
from streams.detectors import partials as p
from streams.detectors.engine import Detectors
from streams.detectors.owners import GLOBAL_OWNER, SESSIONS_OWNER, Owners, incident_owner, owner_of
from streams.detectors.partials import Partials, PartialsMessage
from streams.ingest import Ingestor, RawEvent
from streams.pricing import Pricer
from tests.demo_calls import NOW, demo_calls

PARTITIONS = 4


def priced(events: list[CallEvent], offsets: list[int]) -> pa.Table:
    """Calls priced as the worker prices them, each from the source partition its session's key falls in."""
    raws = []
    for event in events:
        source = zlib.crc32(event.partition_key.encode()) % PARTITIONS
        offsets[source] += 1
        raw = orjson.dumps(event.model_dump(mode="json", exclude_none=True))
        raws.append(RawEvent(raw, source, offsets[source]))
    return Ingestor(Pricer([]), "llm.calls").process(raws).calls.columns


def shown(alerts: list[Alert]) -> list[str]:
    return sorted(a.model_dump_json() for a in alerts)


def test_owners_of_the_partials_raise_exactly_what_one_worker_raises() -> None:
    one = Detectors(DetectorsConfig())
    owners = [Detectors(DetectorsConfig()) for _ in range(PARTITIONS)]
    route = Owners(PARTITIONS)
    offsets = [0] * PARTITIONS
    alone: list[Alert] = []
    shared: list[Alert] = []
    for batch in demo_calls(DemoIncidents.before(NOW)):
        calls = priced(batch, offsets)
        alone.extend(one.observe(calls))
        for owner, share in zip(owners, one.prepare(calls).split(route, PARTITIONS), strict=True):
            travelled = PartialsMessage.decode(PartialsMessage(share, 0.0).encode()).partials
            shared.extend(owner.apply(travelled))

    assert {(a.kind, a.key) for a in alone} >= {
        ("loop_detected", LOOP_SESSION), ("latency_p95", SLOW_MODEL), ("spend_spike", SPIKE_FEATURE),
    }  # fmt: skip
    assert shown(shared) == shown(alone)
    # each incident was raised where its key is owned, and only there
    for n, owner in enumerate(owners):
        for dedup_key in owner.incidents._open:
            kind, _, dimension, key = dedup_key.split(":", 3)
            assert incident_owner(kind, dimension, key.split(":")[0], PARTITIONS) == n


def test_keys_judged_against_totals_and_sessions_have_one_owner() -> None:
    assert owner_of("tenant_id", "tenant_acme", 8) == GLOBAL_OWNER
    assert owner_of("feature", "unattributed", 8) == GLOBAL_OWNER
    assert incident_owner("loop_detected", "session_id", "s-1", 8) == SESSIONS_OWNER
    assert incident_owner("session_budget", "feature", "sales.x", 1) == 0
    assert incident_owner("prompt_version_regression", "prompt_version", "sales.x@v2", 8) == owner_of(
        "feature", "sales.x", 8
    )
    assert len({owner_of("feature", f"f{n}", 8) for n in range(64)}) == 8  # features spread over the owners
    every = Partials({1: {p.CLOCK: [("real", 0, 60.0)], p.SPEND: [("real", "all", "all", 1.0)]}})
    assert all(share.minutes[1] == every.minutes[1] for share in every.split(Owners(3), 3))


def test_partials_cut_in_pieces_raise_what_they_raise_whole() -> None:
    whole = Detectors(DetectorsConfig())
    cut = Detectors(DetectorsConfig())
    offsets = [0] * PARTITIONS
    alerts: list[Alert] = []
    pieces: list[Alert] = []
    for batch in demo_calls(DemoIncidents.before(NOW), days=2.5):
        partials = whole.prepare(priced(batch, offsets))
        alerts += whole.apply(partials)
        chunks = partials.chunks(97)
        assert sum(len(rows) for piece in chunks for kinds in piece.minutes.values() for rows in kinds.values()) >= sum(
            len(rows) for kinds in partials.minutes.values() for rows in kinds.values()
        )
        for piece in chunks:
            pieces += cut.apply(piece)
    assert {(a.kind, a.key, a.severity) for a in pieces if a.status == "firing"} == {
        (a.kind, a.key, a.severity) for a in alerts if a.status == "firing"
    }


def test_a_message_that_is_not_partials_is_refused_saying_so() -> None:
    for raw in (b"not json", b'{"format": 2}', b'{"format": 1, "sent": 1.0}', b"[1, 2]"):
        try:
            PartialsMessage.decode(raw)
        except ValueError as exc:
            assert "partials" in str(exc) or "format" in str(exc)
        else:
            raise AssertionError(f"{raw!r} was read as partials")
    message = PartialsMessage(
        Partials({7: {p.CLOCK: [["real", 2, 420.5]]}}), 3.0, (2,), (2,), {2: (5, 9)}, {2: [4]}, (1, 2)
    )
    assert PartialsMessage.decode(message.encode()) == message


def test_repeated_tool_calls_travel_to_the_owner_of_the_sessions_and_partials_without_them_still_apply() -> None:
    at = NOW - timedelta(hours=1)
    same = args_hash({"q": "sso"})
    events = [
        CallEvent(event_id=f"a{n}", ts=at + timedelta(seconds=10 * n), provider="internal", model="search_docs",
                  kind="tool", tool_name="search_docs", args_hash=same, session_id="s-args", cost_usd=0.0)
        for n in range(3)
    ]  # fmt: skip
    one = Detectors(DetectorsConfig())
    calls = priced(events, [0] * PARTITIONS)
    alone = one.observe(calls)
    assert [(a.kind, a.key) for a in alone] == [("loop_detected", "s-args")]

    shares = one.prepare(calls).split(Owners(PARTITIONS), PARTITIONS)
    holding = [n for n, share in enumerate(shares) if any(p.TOOL_ARGS in kinds for kinds in share.minutes.values())]
    assert holding == [SESSIONS_OWNER]
    owner = Detectors(DetectorsConfig())
    travelled = PartialsMessage.decode(PartialsMessage(shares[SESSIONS_OWNER], 0.0).encode()).partials
    assert shown(owner.apply(travelled)) == shown(alone)

    # a worker of the version before sends no such rows: the rest applies, and no loop is made up
    before = Partials(
        {m: {k: rows for k, rows in kinds.items() if k != p.TOOL_ARGS} for m, kinds in travelled.minutes.items()}
    )
    assert Detectors(DetectorsConfig()).apply(before) == []
