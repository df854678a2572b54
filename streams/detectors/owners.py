"""Which partition of ``spendstream.detector-partials`` owns a detector's key: one owner per key, many workers.

A key's state (a feature's spend, a model's latency window, a provider's errors, a feature's prompt
versions) lives in the worker that holds its partition, so every worker's share of a key's calls
meets in one place. A few questions need every key at once, and go to one fixed owner:

- :data:`GLOBAL_OWNER`: the share of untagged spend needs the spend of all calls (``all``/``all``)
  and of ``unattributed``; tenant concentration needs every tenant's spend (so each ``tenant_id``
  key goes there);
- :data:`SESSIONS_OWNER`: ``session_budget`` judges a live session against the finished sessions
  of its feature and raises one incident per feature naming its largest sessions, so sessions
  (loops included) are judged where all of their feature's sessions meet, whichever partitions of
  ``llm.calls`` their calls came from.

The spend of all calls (``all``/``all``) also goes to every owner: it is never judged there, but it
says when the data mode's history begins, which decides whether a key is new (``spend._too_new``).
"""

from __future__ import annotations

import zlib

GLOBAL_OWNER = 0
"""The partition that owns the keys judged against totals."""
SESSIONS_OWNER = 1
"""The partition that owns the sessions (partition 0 when there is one partition)."""
SESSIONS = "session"
"""The dimension :func:`owner_of` takes for sessions."""
EVERY_OWNER = -1
"""A row every owner takes (the spend of all calls, the clock)."""
_GLOBAL_DIMENSIONS = frozenset({"tenant_id"})
_GLOBAL_KEYS = frozenset({("feature", "unattributed")})
_SESSION_KINDS = frozenset({"loop_detected", "session_budget"})
_TOTAL_KINDS = frozenset({"unattributed_spend", "tenant_concentration"})


def owner_of(dimension: str, key: str, partitions: int) -> int:
    """The partition that owns ``key`` of ``dimension`` (a feature, a model, a user ..., or :data:`SESSIONS`)."""
    if dimension == SESSIONS:
        return SESSIONS_OWNER % partitions
    if dimension in _GLOBAL_DIMENSIONS or (dimension, key) in _GLOBAL_KEYS:
        return GLOBAL_OWNER
    if dimension == "all":
        return EVERY_OWNER
    return zlib.crc32(f"{dimension}\x00{key}".encode()) % partitions


def incident_owner(kind: str, dimension: str, key: str, partitions: int) -> int:
    """The partition whose detectors raised (and resolve) an incident: a warm-up restores it only there."""
    if kind in _SESSION_KINDS:
        return SESSIONS_OWNER % partitions
    if kind in _TOTAL_KINDS:
        return GLOBAL_OWNER
    if kind == "prompt_version_regression":
        return owner_of("feature", key.rpartition("@")[0], partitions)
    return owner_of(dimension, key, partitions)


class Owners:
    """:func:`owner_of` with its answers kept (a batch names the same keys many times)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._known: dict[tuple[str, str], int] = {}

    def __call__(self, dimension: str, key: str) -> int:
        found = self._known.get((dimension, key))
        if found is None:
            if len(self._known) > 200_000:  # user and session ids are many: start afresh now and then
                self._known.clear()
            found = self._known[(dimension, key)] = owner_of(dimension, key, self.partitions)
        return found
