"""A logging filter that lets each line through once per window: for clients that repeat themselves.

Kafka clients that lose their broker log the same failure several times a second for as long as it
is gone (librdkafka's ``Connect to ... failed``, aiokafka's ``Unable connect to node`` and ``Got
error produce response``). The first line says what is wrong; the rest drown whatever else is said.
"""

from __future__ import annotations

import logging
import re
import threading
import time

REPEAT_SECONDS = 60.0
"""How often the same line is let through."""

_COUNTERS = re.compile(r"\d+(\.\d+)?\s*ms")
"""Parts of a line that change at each repeat (``after 0ms in state CONNECT``)."""


class OncePerWindow(logging.Filter):
    """Let a line through when the same line (its counters aside) was not let through in the last ``seconds``."""

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


def quiet_repeats(prefix: str, seconds: float) -> None:
    """Put one :class:`OncePerWindow` on every logger named ``prefix`` or under it that exists now."""
    once = OncePerWindow(seconds)
    names = [name for name in logging.Logger.manager.loggerDict if name == prefix or name.startswith(prefix + ".")]
    for name in [prefix, *names]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerWindow) for f in logger.filters):
            logger.addFilter(once)
