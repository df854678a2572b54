"""``prompt_version_regression``: a feature's newest prompt version costs or uses more per model call.

Per feature, each prompt version's model calls, and the cost and tokens of all its calls (tools
included), since it was first seen. The newest version is compared with the one before it once both
have ``min_calls`` model calls. A flagged version that a newer one replaces is resolved, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import PromptRegressionConfig
from sinks.clickhouse import sql_string
from streams.detectors import calls as c
from streams.detectors.findings import RELAXED, Finding
from streams.detectors.watchlist import Watchlist


@dataclass(slots=True)
class _Version:
    first: float
    calls: int = 0
    cost: float = 0.0
    tokens: int = 0

    def per_call(self) -> tuple[float, float]:
        return self.cost / self.calls, self.tokens / self.calls


class PromptRegressionDetector:
    def __init__(self, config: PromptRegressionConfig) -> None:
        self._config = config
        self._features: dict[tuple[str, str], dict[str, _Version]] = {}
        self._due: Watchlist[tuple[str, str]] = Watchlist()
        self._flagged: dict[tuple[str, str], str] = {}
        """Per (data mode, feature): the version whose incident may be open."""

    def flag(self, data_mode: str, feature: str, version: str) -> None:
        """An open incident of ``version`` (restored at warm-up): resolve it when a newer version replaces it."""
        self._flagged[(data_mode, feature)] = version
        self._due.touch((data_mode, feature))

    def prepare(self, calls: pa.Table) -> dict[int, list[c.Row]]:
        """Per minute of calls (``calls.in_time_order``): per version, its first ts, model calls, cost and tokens.

        Tool calls add their cost, as in the rollups the warm-up reads.
        """
        if not self._config.enabled:
            return {}
        versioned = calls.filter(pc.not_equal(calls.column("prompt_version"), ""))
        # model calls, counted by the sum of a boolean column
        versioned = versioned.append_column("llm", pc.equal(versioned.column("kind"), "llm"))
        return c.per_minute(
            versioned,
            ["data_mode", "feature", "prompt_version"],
            [(c.AT, "min"), ("llm", "sum"), ("cost_usd", "sum"), (c.TOKENS, "sum")],
        )

    def observe(self, minute: int, counts: list[c.Row]) -> None:
        """Count one event-time minute's calls (from :meth:`prepare`) into their versions."""
        for data_mode, feature, version, first, calls, cost, tokens in counts:
            self.add(data_mode, feature, version, first, calls, cost or 0.0, tokens)

    def add(self, data_mode: str, feature: str, version: str, at: float, calls: int, cost: float, tokens: int) -> None:
        """Count calls of one version (also used to warm up from ``rollup_day``)."""
        key = (data_mode, feature)
        versions = self._features.setdefault(key, {})
        found = versions.get(version)
        if found is None:
            found = versions[version] = _Version(at)
        found.first = min(found.first, at)
        found.calls += calls
        found.cost += cost
        found.tokens += tokens
        self._due.touch(key)

    def check(self, now_of: dict[str, float]) -> list[Finding]:
        cfg = self._config
        findings = []
        for key in self._due.due():
            now = now_of.get(key[0])
            versions = self._features.get(key, {})
            if now is None or len(versions) < 2:
                continue
            (old_name, old), (new_name, new) = sorted(versions.items(), key=lambda item: item[1].first)[-2:]
            flagged = self._flagged.get(key)
            if flagged is not None and flagged != new_name:
                del self._flagged[key]
                findings.append(_superseded(key, flagged, new_name, now))
            if old.calls < cfg.min_calls or new.calls < cfg.min_calls:
                continue
            (old_cost, old_tokens), (new_cost, new_tokens) = old.per_call(), new.per_call()
            cost_ratio = new_cost / old_cost if old_cost > 0 else 1.0
            token_ratio = new_tokens / old_tokens if old_tokens > 0 else 1.0
            firing = cost_ratio >= cfg.factor or token_ratio >= cfg.factor
            sustained = max(cost_ratio, token_ratio) >= RELAXED * cfg.factor
            if not firing and not sustained and not self._due.is_watched(key):
                continue  # quiet, and no incident to resolve
            data_mode, feature = key
            findings.append(
                Finding(
                    kind="prompt_version_regression", data_mode=data_mode, dimension="prompt_version",
                    key=f"{feature}@{new_name}", severity="warning" if firing else None, sustained=sustained,
                    value=round(new_cost, 6), baseline=round(old_cost, 6), threshold=round(cfg.factor * old_cost, 6),
                    window="version",
                    message=(
                        f"prompt version {new_name} of {feature} costs ${new_cost:.4f} and {new_tokens:,.0f} tokens "
                        f"per model call over {new.calls:,} calls: {cost_ratio:.1f}x the cost and "
                        f"{token_ratio:.1f}x the tokens of {old_name} (${old_cost:.4f}, {old_tokens:,.0f} tokens; "
                        f"alerts at {cfg.factor:g}x)."
                    ),
                    query=(
                        "SELECT prompt_version, model, count() AS calls, round(avg(input_tokens)) AS input_per_call, "
                        "round(avg(output_tokens)) AS output_per_call, round(avg(cost_usd), 6) AS usd_per_call "
                        f"FROM llm_calls WHERE feature = {sql_string(feature)} AND kind = 'llm' "
                        f"AND data_mode = {sql_string(data_mode)} "
                        f"AND prompt_version IN ({sql_string(old_name)}, {sql_string(new_name)}) "
                        "GROUP BY prompt_version, model ORDER BY prompt_version, calls DESC"
                    ),
                    at=now,
                )
            )  # fmt: skip
            if firing or sustained:
                self._due.watch(key)
                self._flagged[key] = new_name
        return findings


def _superseded(key: tuple[str, str], version: str, newer: str, now: float) -> Finding:
    data_mode, feature = key
    return Finding(
        kind="prompt_version_regression", data_mode=data_mode, dimension="prompt_version",
        key=f"{feature}@{version}", severity=None, value=0.0, baseline=None, threshold=None, window="version",
        message=f"prompt version {version} of {feature} was replaced by {newer}.",
        query=(
            "SELECT prompt_version, min(ts) AS first_call, max(ts) AS last_call, count() AS calls FROM llm_calls "
            f"WHERE feature = {sql_string(feature)} AND data_mode = {sql_string(data_mode)} "
            f"AND prompt_version IN ({sql_string(version)}, {sql_string(newer)}) GROUP BY prompt_version"
        ),
        at=now,
    )  # fmt: skip
