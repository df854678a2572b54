"""Routing: which Slack channel an alert goes to."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from schemas.alert import Alert
from schemas.config import Route


def channel_for(alert: Alert, routes: Sequence[Route]) -> str | None:
    """The channel of the first route that matches ``alert``, or None when none does."""
    for route in routes:
        match = route.match
        if match.kind is not None and match.kind != alert.kind:
            continue
        if match.severity is not None and match.severity != alert.severity:
            continue
        if match.dimension is not None and match.dimension != alert.dimension:
            continue
        if match.key is not None and not fnmatchcase(alert.key, match.key):
            continue
        if match.threshold_pct is not None and threshold_pct(alert) != match.threshold_pct:
            continue
        return route.channel
    return None


def threshold_pct(alert: Alert) -> int | None:
    """A ``budget_threshold`` alert's threshold in percent of its limit (``threshold`` / ``baseline``)."""
    if alert.kind != "budget_threshold" or alert.threshold is None or not alert.baseline:
        return None
    return round(100 * alert.threshold / alert.baseline)
