"""The ``unpriced_model`` detector: a model with no known price is being called."""

from __future__ import annotations

from datetime import UTC, date, datetime

from schemas.alert import Alert, alert_id_for
from sinks.clickhouse import sql_string


class UnpricedModelDetector:
    """One alert per model, UTC day and data mode in which calls are stored without a price.

    The alert id follows from the model and the day, so a restarted worker that raises it again
    stores it once.
    """

    def __init__(self) -> None:
        self._raised: set[str] = set()

    def check(self, unpriced_calls: dict[tuple[str, str, date, str], int]) -> list[Alert]:
        alerts = []
        for (provider, model, day, data_mode), calls in sorted(unpriced_calls.items()):
            dedup_key = f"unpriced_model:{data_mode}:{provider}/{model}:{day.isoformat()}"
            if dedup_key in self._raised:
                continue
            self._raised.add(dedup_key)
            alerts.append(
                Alert(
                    alert_id=alert_id_for(dedup_key),
                    ts=datetime.combine(day, datetime.min.time(), UTC),
                    kind="unpriced_model",
                    severity="warning",
                    dimension="model",
                    key=f"{provider}/{model}",
                    value=calls,
                    window="1d",
                    message=(
                        f"No price is known for {provider}/{model}: its calls on {day} are stored with cost_usd "
                        f"NULL ({calls} so far). Add a price override for it to the config file, restart the "
                        f"workers, then run `spendstream reprice --since {day} --model {model}`."
                    ),
                    query=(
                        "SELECT feature, count() AS calls, sum(input_tokens) AS input_tokens, "
                        "sum(output_tokens) AS output_tokens FROM llm_calls "
                        f"WHERE provider = {sql_string(provider)} AND model = {sql_string(model)} AND priced = 0 "
                        f"AND toDate(ts) = '{day.isoformat()}' GROUP BY feature ORDER BY calls DESC"
                    ),
                    dedup_key=dedup_key,
                    data_mode=data_mode,
                )
            )
        return alerts
