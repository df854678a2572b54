"""Inhibition: a new incident that is an open incident's cause seen through another key goes in its thread.

A runaway feature also lights up its model, team and tenant; a tenant taking over lights up each of
its users, one after the other, for hours. Each is a true finding, and each would be a new Slack
message about the same cause. In the manner of Alertmanager's inhibition rules, a new incident is
*explained* by an open one (its cause) when, without the cause's calls, it would not fire: the
measured value of its key over its window, taken again from ``llm_calls`` leaving out the calls of
the cause's key, does not pass its threshold. An explained incident is posted as a reply in its
cause's thread (when its route sends it to the same channel), not as a message of its own.

The cause is an incident of the same family (spend: ``spend_spike`` and ``hourly_burn``; errors;
latency), open and delivered, raised before the new one, on another key or another kind of the same
key (an open ``hourly_burn`` of a feature explains its later ``spend_spike``). ClickHouse is asked,
where every worker's calls meet, so the answer is the same with one worker or many; it is asked
only for a new incident of these families while another of its family is open.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from schemas.alert import Alert
from sinks.clickhouse import sql_string
from streams.detectors.errors import FAILED_STATUSES
from streams.detectors.latency import MEASURED_STATUS

FAMILIES: dict[str, str] = {
    "spend_spike": "spend", "hourly_burn": "spend", "error_rate": "errors", "latency_p95": "latency",
}  # fmt: skip
"""The kinds that can be explained by another incident, and the family whose incidents can explain them."""
COLUMNS = frozenset({"feature", "model", "agent_id", "tenant_id", "team", "user_id", "provider"})
"""Dimensions whose key is a column of ``llm_calls``."""
_WINDOW = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": 60, "h": 3600, "d": 86_400}


@dataclass(frozen=True, slots=True)
class OpenIncident:
    """An open, delivered incident: a possible cause, and the thread where what it explains goes."""

    dedup_key: str
    kind: str
    dimension: str
    key: str
    channel: str
    thread_ts: str
    last_posted: float
    """Epoch seconds of its latest message (a reply to it waits for the group interval)."""
    opened: float
    """Event time (epoch seconds) of its first alert."""


def window_seconds(window: str) -> int | None:
    """``5m``, ``1h``, ``24h``, ``1d`` in seconds; None for a window this module cannot measure."""
    match = _WINDOW.match(window)
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


def measurable(alert: Alert) -> bool:
    """Whether ``alert`` is the kind of new incident a cause can explain."""
    return (
        alert.status == "firing"
        and alert.kind in FAMILIES
        and alert.dimension in COLUMNS
        and alert.threshold is not None
        and window_seconds(alert.window) is not None
    )


def explains(client: Client, database: str, cause: OpenIncident, alert: Alert) -> bool:
    """Whether ``alert`` would not fire without the calls of ``cause``'s key (see the module)."""
    if FAMILIES.get(cause.kind) != FAMILIES.get(alert.kind) or cause.dimension not in COLUMNS:
        return False
    if (cause.dimension, cause.key) == (alert.dimension, alert.key):
        return True  # another kind of the same key's trouble
    seconds = window_seconds(alert.window)
    if seconds is None or alert.threshold is None:
        return False
    outside = f"NOT ({cause.dimension} = %(cause)s)"
    family = FAMILIES[alert.kind]
    if family == "spend":
        value = f"sumIf(cost_usd, {outside})"
    elif family == "errors":
        failed = ", ".join(sql_string(status) for status in FAILED_STATUSES)
        value = f"countIf(status IN ({failed}) AND {outside}) / greatest(countIf({outside}), 1)"
    else:
        column = "ttft_ms" if alert.dedup_key.endswith(":ttft") else "latency_ms"
        value = f"quantileIf(0.95)({column}, status = {sql_string(MEASURED_STATUS)} AND {outside})"
    scope = "" if family == "spend" else "AND kind = 'llm' "
    # detectors count calls a minute at a time: the window ends with the minute of the alert's clock
    until = -(-int(alert.ts.timestamp() * 1000) // 60_000) * 60_000
    parameters = {
        "cause": cause.key, "key": alert.key, "mode": alert.data_mode, "since": until - seconds * 1000, "until": until,
    }  # fmt: skip
    rows = client.query(
        f"SELECT {value}, count() FROM `{database}`.llm_calls "
        f"WHERE {alert.dimension} = %(key)s AND data_mode = %(mode)s {scope}"
        "AND ts > fromUnixTimestamp64Milli(%(since)s, 'UTC') AND ts <= fromUnixTimestamp64Milli(%(until)s, 'UTC')",
        parameters=parameters,
    ).result_rows
    if not rows or not rows[0][1]:
        return False  # none of its calls in sight (not stored yet, or its clock behind them): nothing to judge by
    without = rows[0][0]
    return without is None or without != without or float(without) <= alert.threshold  # NaN: no calls left


def open_incidents(client: Client, database: str, data_mode: str, family: str) -> list[OpenIncident]:
    """The open, delivered incidents of one family and data mode, oldest first."""
    rows = client.query(
        "SELECT dedup_key, any(kind), any(dimension), any(key), channel, argMax(thread_ts, updated_at), "
        "toUnixTimestamp64Milli(max(updated_at)), argMax(status, (ts, updated_at)) AS latest, "
        "toUnixTimestamp64Milli(min(ts)) AS first "
        f"FROM `{database}`.alerts FINAL "
        "WHERE delivery_state = 'delivered' AND thread_ts != '' AND data_mode = %(mode)s AND kind IN %(kinds)s "
        "GROUP BY dedup_key, channel HAVING latest = 'firing' ORDER BY first",
        parameters={"mode": data_mode, "kinds": sorted(k for k, f in FAMILIES.items() if f == family)},
    ).result_rows
    return [
        OpenIncident(key, kind, dimension, name, channel, thread, last / 1000, first / 1000)
        for key, kind, dimension, name, channel, thread, last, _, first in rows
    ]


Answers = OrderedDict[tuple[str, str], bool]
"""Per (alert id, cause's dedup key): whether the cause explains the alert, asked once (see :class:`Causes`)."""
MAX_ANSWERS = 4096


class Causes:
    """Finds the cause of new incidents for one delivery round (each family's open incidents read once).

    ``answers`` outlives the round: an incident held for its group wait is asked about each round,
    and ClickHouse is asked once per (incident, cause).
    """

    def __init__(self, client: Client, database: str, answers: Answers) -> None:
        self._client = client
        self._database = database
        self._open: dict[tuple[str, str], list[OpenIncident]] = {}
        self._answers = answers

    def of(self, alert: Alert, channel: str) -> OpenIncident | None:
        """The oldest open incident posted to ``channel`` before ``alert`` that explains it, if any."""
        if not measurable(alert):
            return None
        family = FAMILIES[alert.kind]
        found = self._open.get((alert.data_mode, family))
        if found is None:
            found = self._open[(alert.data_mode, family)] = open_incidents(
                self._client, self._database, alert.data_mode, family
            )
        raised = alert.ts.timestamp()
        for cause in found:
            if (
                cause.channel == channel
                and cause.dedup_key != alert.dedup_key
                and cause.opened <= raised
                and self._explains(cause, alert)
            ):
                return cause
        return None

    def _explains(self, cause: OpenIncident, alert: Alert) -> bool:
        key = (alert.alert_id, cause.dedup_key)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = explains(self._client, self._database, cause, alert)
            if len(self._answers) > MAX_ANSWERS:
                self._answers.popitem(last=False)
        return answer
