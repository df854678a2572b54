"""librdkafka's own log lines, through Python's logging, each said once a minute at most.

Left to itself, librdkafka writes to stderr, and while no broker answers it writes the same
``Connect to ... failed: Connection refused`` line several times a second, for as long as the
broker is down: the SDK's own one-line warning drowns in it. The emitter and the guard hand
librdkafka the logger ``spendstream.kafka`` instead (unless the application passes a ``logger``
in ``kafka_config``), where a line is let through once per ``REPEAT_SECONDS``: the application's
logging configuration decides the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from producers.log_repeats import REPEAT_SECONDS, OncePerWindow

KAFKA_LOGGER = logging.getLogger("spendstream.kafka")
KAFKA_LOGGER.addFilter(OncePerWindow(REPEAT_SECONDS))


def quiet_kafka_logs(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with librdkafka's lines sent to :data:`KAFKA_LOGGER`, unless it names a ``logger`` of its own."""
    return {"logger": KAFKA_LOGGER, **config}
