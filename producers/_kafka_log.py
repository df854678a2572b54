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
import re
import threading
import time
from typing import Any

REPEAT_SECONDS = 60.0
_COUNTERS = re.compile(r"\d+(\.\d+)?\s*ms")
"""Parts of a line that change at each repeat (``after 0ms in state CONNECT``)."""


class _OncePerWindow(logging.Filter):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._seconds = seconds
        self._said: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        line = _COUNTERS.sub("", record.getMessage())
        now = time.monotonic()
        with self._lock:
            said = self._said.get(line)
            if said is not None and now - said < self._seconds:
                return False
            if len(self._said) > 1000:
                self._said.clear()
            self._said[line] = now
        return True


KAFKA_LOGGER = logging.getLogger("spendstream.kafka")
KAFKA_LOGGER.addFilter(_OncePerWindow(REPEAT_SECONDS))


def quiet_kafka_logs(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with librdkafka's lines sent to :data:`KAFKA_LOGGER`, unless it names a ``logger`` of its own."""
    return {"logger": KAFKA_LOGGER, **config}
