"""Warm-up: a started worker fills its detectors from ClickHouse before it reads new calls.

Spend comes from the rollups (hours of the last four weeks and a day, what the seasonal baselines
compare with, and minutes of the current and last hour),
prompt versions from the daily rollup, and the short windows (sessions, latency, errors) from the
calls of the last hour. Incidents still open in the ``alerts`` table stay open, so a restarted
worker neither raises them again nor forgets to resolve them.

With several workers, each warms up the keys of the partitions of ``spendstream.detector-partials``
it owns (:func:`warm_up_owned`, :mod:`streams.detectors.owners`): one read of ClickHouse, each row
given to its key's owner.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas.alert import DAY_WINDOW
from sinks import call_block
from sinks.batch import LLM_CALL_COLUMNS
from sinks.clickhouse import utc
from streams.detectors.baseline import KEEP_HOURS
from streams.detectors.engine import STREAM_KINDS, Detectors
from streams.detectors.owners import EVERY_OWNER, SESSIONS, Owners, incident_owner
from streams.detectors.sessions import HISTORY_LIMIT
from streams.detectors.spend import SPEND_DIMENSIONS

logger = logging.getLogger(__name__)

RECENT_CALLS_LIMIT = 200_000


@dataclass(frozen=True, slots=True)
class WarmUp:
    spend_rows: int
    prompt_versions: int
    recent_calls: int
    open_incidents: int
    finished_sessions: int = 0


def warm_up(detectors: Detectors, client: Client, database: str) -> WarmUp:
    """Fill one worker's detectors, which own every key."""
    return warm_up_owned({0: detectors}, 1, client, database)


def warm_up_owned(owned: Mapping[int, Detectors], partitions: int, client: Client, database: str) -> WarmUp:
    """Fill the detectors of the partitions ``owned`` (of ``partitions``), each with the keys it owns."""
    db = f"`{database}`"
    owner = Owners(partitions)
    marks = client.query(f"SELECT data_mode, max(ts) FROM {db}.llm_calls GROUP BY data_mode").result_rows
    if not marks:
        return WarmUp(0, 0, 0, 0)

    def owners_of(dimension: str, key: str) -> list[Detectors]:
        to = owner(dimension, key)
        if to == EVERY_OWNER:
            return list(owned.values())
        found = owned.get(to)
        return [] if found is None else [found]

    dims = ", ".join(f"'{d}'" for d in ("all", *SPEND_DIMENSIONS))
    spend_rows = 0
    for data_mode, latest in marks:
        hour = utc(latest).replace(minute=0, second=0, microsecond=0)
        params = {"mode": data_mode, "hour": hour.replace(tzinfo=None)}
        hours = client.query(
            f"SELECT dimension, key, bucket, sum(cost_usd) FROM {db}.rollup_hour "
            f"WHERE data_mode = %(mode)s AND dimension IN ({dims}) AND bucket >= %(hour)s - INTERVAL {KEEP_HOURS} HOUR "
            "AND bucket < %(hour)s GROUP BY dimension, key, bucket HAVING sum(cost_usd) > 0",
            parameters=params,
        ).result_rows
        minutes = client.query(
            f"SELECT dimension, key, bucket, sum(cost_usd) FROM {db}.rollup_minute "
            f"WHERE data_mode = %(mode)s AND dimension IN ({dims}) AND bucket >= %(hour)s - INTERVAL 1 HOUR "
            "GROUP BY dimension, key, bucket HAVING sum(cost_usd) > 0",
            parameters=params,
        ).result_rows
        for dimension, key, bucket, usd in hours:
            for detectors in owners_of(dimension, key):
                detectors.spend.add(data_mode, dimension, key, _epoch(bucket), usd, minute=False)
        for dimension, key, bucket, usd in minutes:
            at = _epoch(bucket)
            for detectors in owners_of(dimension, key):
                detectors.spend.add(data_mode, dimension, key, at, usd, minute=True, hour=at >= hour.timestamp())
        spend_rows += len(hours) + len(minutes)
    versions = client.query(
        f"SELECT data_mode, key, min(bucket), sum(llm_calls), sum(cost_usd), sum(input_tokens + output_tokens) "
        f"FROM {db}.rollup_day WHERE dimension = 'prompt_version' GROUP BY data_mode, key"
    ).result_rows
    for data_mode, key, first, calls, usd, tokens in versions:
        feature, _, version = key.rpartition("@")
        if calls:
            for detectors in owners_of("feature", feature):
                detectors.prompts.add(data_mode, feature, version, _epoch(first), int(calls), float(usd), int(tokens))
    config = next(iter(owned.values())).config
    window = max(config.loop_detected.session_idle_minutes, 60.0)
    sessions_owner = owned.get(owner(SESSIONS, ""))
    sessions = 0
    if sessions_owner is not None and config.session_budget.enabled:
        sessions = _session_history(sessions_owner, client, db, window)
    recent = client.query(
        f"SELECT {', '.join(LLM_CALL_COLUMNS)} FROM {db}.llm_calls "
        f"WHERE ts > (SELECT max(ts) FROM {db}.llm_calls) - INTERVAL {int(window)} MINUTE "
        f"ORDER BY ts DESC LIMIT {RECENT_CALLS_LIMIT}"
    ).result_rows
    rows = [_aware(row) for row in reversed(recent)]  # the newest calls, oldest first
    if rows:
        counter = next(iter(owned.values()))
        shares = counter.prepare(call_block.table(rows), recent=True).split(owner, partitions)
        for partition, detectors in owned.items():
            detectors.apply(shares[partition], check=False)
    for data_mode, latest in marks:
        at = utc(latest).timestamp()
        for detectors in owned.values():
            detectors.now_of[data_mode] = max(detectors.now_of.get(data_mode, 0.0), at)
    open_incidents = client.query(
        f"SELECT dedup_key, argMax(severity, ts), max(ts), argMax(value, ts), any(kind), any(data_mode), "
        f"any(dimension), any(key) FROM {db}.alerts FINAL "
        # the detectors' own incidents: not budget or unpriced-model alerts, nor the scheduled daily checks'
        "WHERE kind IN %(kinds)s AND window != %(day)s AND ts > now() - INTERVAL 8 DAY GROUP BY dedup_key "
        "HAVING argMax(status, ts) = 'firing'",
        parameters={"kinds": list(STREAM_KINDS), "day": DAY_WINDOW},
    ).result_rows
    restored = 0
    for dedup_key, severity, at, value, kind, data_mode, dimension, key in open_incidents:
        found = owned.get(incident_owner(kind, dimension, key, partitions))
        if found is None:
            continue
        restored += 1
        found.incidents.restore(dedup_key, severity, _epoch(at), float(value))
        if kind == "prompt_version_regression":
            feature, _, version = key.rpartition("@")
            found.prompts.flag(data_mode, feature, version)
    summary = WarmUp(spend_rows, len(versions), len(rows), restored, sessions)
    logger.info("detectors of partitions %s warmed up from ClickHouse: %s", sorted(owned), summary)
    return summary


def _session_history(detectors: Detectors, client: Client, db: str, window_minutes: float) -> int:
    """Each feature's finished sessions of the last ``history_days`` (the latest ``HISTORY_LIMIT``), for
    ``session_budget``'s percentiles; sessions of the recent calls the warm-up replays are left to them."""
    days = detectors.config.session_budget.history_days
    finished = client.query(
        "SELECT data_mode, argMin(feature, ts) AS first_feature, max(ts) AS last, "
        "sum(input_tokens + output_tokens), countIf(kind = 'tool'), sum(ifNull(cost_usd, 0)) "
        f"FROM {db}.llm_calls WHERE ts > (SELECT max(ts) FROM {db}.llm_calls) - INTERVAL {int(days * 86_400)} SECOND "
        "AND (session_id != '' OR trace_id != '') GROUP BY data_mode, if(session_id != '', session_id, trace_id) "
        f"HAVING last < (SELECT max(ts) FROM {db}.llm_calls) - INTERVAL {int(window_minutes)} MINUTE "
        f"ORDER BY last DESC LIMIT {HISTORY_LIMIT} BY data_mode, first_feature"
    ).result_rows
    for data_mode, feature, last, tokens, tool_calls, cost in reversed(finished):  # oldest first
        detectors.sessions.add_history(data_mode, feature, _epoch(last), (float(tokens), float(tool_calls), cost))
    return len(finished)


def _epoch(value: datetime) -> float:
    return utc(value).timestamp()


def _aware(row: Sequence[Any]) -> tuple[Any, ...]:
    """A stored call row as the detectors read it: ``ts`` aware, like a row the sink just wrote."""
    return (row[0], utc(row[1]), *row[2:])
