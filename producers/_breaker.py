"""Circuit breakers per tool and per model: fail fast while a dependency keeps failing.

Each tool (``tool:NAME``) and each model (``model:PROVIDER/MODEL``) has a breaker. It opens after
``failures`` failed calls (status error, timeout or rate_limited) within ``window_seconds``; while
open, calls raise :class:`~producers.CircuitOpen` at once, not made; after ``cooldown_seconds``
one trial call goes through (``half_open``; the others still fail fast): if it succeeds the
breaker closes, if it fails it opens for another cool-down. All in process, under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from producers._exceptions import CircuitOpen, SDKError

BreakerPosition = Literal["closed", "open", "half_open"]
FAILED = frozenset({"error", "timeout", "rate_limited"})


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """How the tracker's breakers behave (``Tracker(breakers=CircuitBreakers())``).

    Args:
        failures: failed calls that open a breaker ...
        window_seconds: ... when they come within this many seconds.
        cooldown_seconds: how long an open breaker fails calls fast before one trial call.
        tools: a breaker per tool (``kind="tool"`` calls, by ``tool_name``).
        models: a breaker per model (``kind="llm"`` calls, by provider and model).
    """

    failures: int = 5
    window_seconds: float = 60.0
    cooldown_seconds: float = 30.0
    tools: bool = True
    models: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or self.failures < 1:
            raise SDKError(f"CircuitBreakers failures={self.failures!r}: a whole number of at least 1")
        for name in ("window_seconds", "cooldown_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise SDKError(f"CircuitBreakers {name}={value!r}: a number of seconds above 0")


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One breaker as :meth:`Tracker.stats` shows it."""

    position: BreakerPosition
    failures: int
    """Failed calls within the window (those that opened it, while open)."""
    opened: int
    """Times it opened since the tracker started."""
    fast_failed: int
    """Calls it failed fast, not made."""
    retry_in_seconds: float | None
    """While open: when the trial call goes through; None otherwise."""


@dataclass(slots=True)
class _Breaker:
    failures: deque[float] = field(default_factory=deque)
    open_until: float | None = None
    trial: bool = False
    """A trial call is in flight (half open)."""
    opened: int = 0
    fast_failed: int = 0


class Breakers:
    """The breakers of one tracker."""

    def __init__(self, config: CircuitBreakers) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}

    def key(self, kind: str, provider: str, model: str | None, tool_name: str | None) -> str | None:
        """The breaker of a call, or None when none applies to it."""
        if kind == "tool":
            return f"tool:{tool_name or model}" if self.config.tools and (tool_name or model) else None
        return f"model:{provider}/{model}" if self.config.models and model else None

    def admit(self, key: str) -> bool:
        """Let a call through; True when it is the trial call of an open breaker.

        Raises:
            CircuitOpen: the breaker is open (or half open with its trial in flight).
        """
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None or breaker.open_until is None:
                return False
            now = time.monotonic()
            if now >= breaker.open_until and not breaker.trial:
                breaker.trial = True
                return True
            breaker.fast_failed += 1
            raise CircuitOpen(
                key, len(breaker.failures), self.config.window_seconds, max(0.0, breaker.open_until - now)
            )

    def record(self, key: str, status: str, trial: bool) -> None:
        """A call that went through ended with ``status``."""
        failed = status in FAILED
        if not failed and not trial and key not in self._breakers:
            return  # the common case: a healthy dependency, no lock taken
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                if not failed:
                    return
                breaker = self._breakers[key] = _Breaker()
            now = time.monotonic()
            if trial:
                breaker.trial = False
                if failed:
                    breaker.open_until = now + self.config.cooldown_seconds
                    breaker.opened += 1
                else:
                    breaker.open_until = None
                    breaker.failures.clear()
                return
            if not failed or breaker.open_until is not None:
                return  # a call let through before the breaker opened says nothing new
            failures = breaker.failures
            failures.append(now)
            while failures and now - failures[0] > self.config.window_seconds:
                failures.popleft()
            if len(failures) >= self.config.failures:
                breaker.open_until = now + self.config.cooldown_seconds
                breaker.opened += 1

    def release(self, key: str, trial: bool) -> None:
        """A call let through was not made after all: a trial it held goes to the next call."""
        if trial:
            with self._lock:
                self._breakers[key].trial = False

    def states(self) -> dict[str, BreakerState]:
        now = time.monotonic()
        with self._lock:
            states = {}
            for key, breaker in sorted(self._breakers.items()):
                failures = breaker.failures
                if breaker.open_until is None:
                    while failures and now - failures[0] > self.config.window_seconds:
                        failures.popleft()
                    position: BreakerPosition = "closed"
                elif breaker.trial or now >= breaker.open_until:
                    position = "half_open"
                else:
                    position = "open"
                retry = None if breaker.open_until is None else max(0.0, breaker.open_until - now)
                states[key] = BreakerState(position, len(failures), breaker.opened, breaker.fast_failed, retry)
            return states
