"""The budget guard: stops a call before it is made when a budget or the kill switch says so.

A background thread reads the compacted topic ``spendstream.budgets`` from its start and keeps the
latest state of every scope in memory, so :meth:`BudgetGuard.check` makes no network call. Before
a model or tool call, the guard looks at the kill switch (global, and the call's agent, feature,
tool, prompt version, tenant and session) and at the budget of each of the call's keys (user,
tenant, feature, agent, team, environment, session, workflow); the strictest wins: deny, then downgrade, then
throttle, then allow, and a call downgraded by one budget is still delayed by a throttle in force
(of that budget's thresholds, or of another budget).

When the guard has not read the topic to its end yet, or has lost the brokers, what it has read
still holds: a kill switch or a denying budget it knows of keeps denying, whatever ``fail`` says
(a lifted kill it could not read yet is lifted when the brokers are back). ``fail`` decides only
the calls that nothing it knows would deny: ``open`` allows them, ``closed`` denies them; both are
counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from producers._exceptions import BudgetExceededError, SDKError
from producers._kafka_log import quiet_kafka_logs
from schemas import topics
from schemas.budget import KILL_DIMENSIONS, SEVERITY_ORDER, BudgetState, GuardState, budget_scope, kill_scope

if TYPE_CHECKING:
    from schemas.config import PriceOverride
    from streams.pricing import Pricer

logger = logging.getLogger("spendstream.guard")

BUDGET_DIMENSIONS = ("user_id", "tenant_id", "feature", "agent_id", "team", "environment", "session_id", "workflow")
FailMode = Literal["open", "closed"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one call, and why."""

    action: GuardState
    reason: str
    scope: str | None = None
    """The budget or kill switch that decided (None: nothing limits the call)."""
    remaining_usd: float | None = None
    model: str | None = None
    """The model to call: the cheaper one on ``downgrade``, else the one asked for."""
    delay_seconds: float = 0.0
    """How long to wait before the call (``throttle``, or a ``downgrade`` with a throttle in force)."""


@dataclass(frozen=True, slots=True)
class GuardStats:
    scopes: int
    """Scopes with a state in memory (budgets and kill switches)."""
    ready: bool
    """The topic was read to its end since the guard started, and the brokers answer."""
    failed_open: int
    """Calls allowed without knowing the state (``fail="open"``)."""
    failed_closed: int
    """Calls denied without knowing the state (``fail="closed"``)."""
    denied: int
    downgraded: int
    throttled: int
    last_error: str
    held: int = 0
    """Calls denied, while the state was unknown, by a kill switch or budget read before (whatever ``fail`` says)."""


class BudgetGuard:
    """Budget state in memory, from ``spendstream.budgets``; ``check``/``enforce`` before each call.

    Args:
        bootstrap: the Kafka cluster (``host:9092``).
        topic: the budgets topic (with your installation's prefix, if any).
        fail: what to do while the state is unknown (not read yet, or the brokers lost) with calls that
            nothing read before denies: ``open`` allows them, ``closed`` denies them. A kill switch or
            a denying budget read before holds either way.
        kafka_config: more librdkafka settings (security).
        price_overrides: the config's ``prices.overrides`` (``load_config(path).prices.overrides``), so
            :meth:`estimate_usd` prices self-hosted and negotiated models as the pipeline does.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = topics.BUDGETS,
        fail: FailMode = "open",
        kafka_config: dict[str, Any] | None = None,
        price_overrides: Sequence[PriceOverride] = (),
    ) -> None:
        if fail not in ("open", "closed"):
            raise SDKError(f"fail must be 'open' or 'closed', not {fail!r}")
        self._topic = topic
        self._fail = fail
        self._config = quiet_kafka_logs(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"spendstream-guard-{id(self):x}",  # never commits: it always reads from the start
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",  # a position past a new, shorter log: from its start
                "error_cb": self._on_error,
                **(kafka_config or {}),
            }
        )
        self._overrides = tuple(price_overrides)
        self._pricer: Pricer | None = None
        self._states: dict[str, BudgetState] = {}
        self._lock = threading.Lock()
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._brokers_down = False
        self._last_error = ""
        self._counts = {"failed_open": 0, "failed_closed": 0, "denied": 0, "downgraded": 0, "throttled": 0, "held": 0}
        self._thread = threading.Thread(target=self._run, name="spendstream-guard", daemon=True)
        self._thread.start()

    # -- before a call ----------------------------------------------------------------------------

    def check(self, *, model: str | None = None, estimated_usd: float | None = None, **keys: Any) -> Decision:
        """The decision for a call with these keys (``agent_id=..., tenant_id=..., feature=...``).

        ``estimated_usd``: the call's cost if known beforehand (see :meth:`estimate_usd`); a call that
        would take a budget past its limit is treated as if the limit were reached.
        """
        now = datetime.now(UTC)
        decision = Decision("allow", "no budget or kill switch limits this call", model=model)
        with self._lock:
            candidates = [self._states.get(kill_scope())]
            candidates += [self._states.get(kill_scope(d, str(keys[d]))) for d in KILL_DIMENSIONS if keys.get(d)]
            candidates += [self._states.get(budget_scope(d, str(keys[d]))) for d in BUDGET_DIMENSIONS if keys.get(d)]
        delay = 0.0
        for state in candidates:
            if state is None or (state.period_end is not None and state.period_end <= now):
                continue
            found = _decide(state, model, estimated_usd)
            delay = max(delay, found.delay_seconds)
            if SEVERITY_ORDER[found.action] > SEVERITY_ORDER[decision.action]:
                decision = found
        if decision.action in ("throttle", "downgrade") and delay > decision.delay_seconds:
            decision = replace(decision, delay_seconds=delay)  # a throttle of another budget holds too
        return decision if self.ready else self._unknown(decision)

    def enforce(
        self, *, model: str | None = None, estimated_usd: float | None = None, wait: bool = True, **keys: Any
    ) -> Decision:
        """:meth:`check`, then act on it: raise on deny, wait ``delay_seconds`` on throttle (and on a downgrade
        with a throttle in force) unless ``wait`` is False (the caller waits, as an async caller does);
        returns the decision (its ``model``).

        Raises:
            BudgetExceededError: a budget or kill switch denies the call.
        """
        decision = self.check(model=model, estimated_usd=estimated_usd, **keys)
        if decision.action == "deny":
            self._counts["denied"] += 1
            raise BudgetExceededError(decision)
        if decision.action == "downgrade":
            self._counts["downgraded"] += 1
        if decision.delay_seconds > 0:
            self._counts["throttled"] += 1
            if wait:
                time.sleep(decision.delay_seconds)
        return decision

    def estimate_usd(self, provider: str, model: str, input_tokens: int, max_output_tokens: int) -> float | None:
        """The most a call can cost: its prompt, and ``max_output_tokens`` generated; None for an unpriced model."""
        if self._pricer is None:
            from streams.pricing import Pricer

            self._pricer = Pricer(self._overrides)
        unit = self._pricer.unit_prices(provider, model, date.today(), input_tokens)
        return None if unit is None else unit.cost(input_tokens, max_output_tokens, 0, 0)

    @property
    def price_overrides(self) -> tuple[PriceOverride, ...]:
        """The price overrides it estimates with (the tracker prices calls under a cost cap with them too)."""
        return self._overrides

    # -- state ------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._caught_up.is_set() and not self._brokers_down

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the topic was read to its end; False if it was not within ``timeout``."""
        return self._caught_up.wait(timeout) and not self._brokers_down

    def state(self, scope: str) -> BudgetState | None:
        with self._lock:
            return self._states.get(scope)

    def states(self) -> list[BudgetState]:
        with self._lock:
            return list(self._states.values())

    def stats(self) -> GuardStats:
        with self._lock:
            scopes = len(self._states)
        return GuardStats(scopes=scopes, ready=self.ready, last_error=self._last_error, **self._counts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # -- the reader thread ------------------------------------------------------------------------

    def _unknown(self, known: Decision) -> Decision:
        """The decision while the state is unknown: what was read holds; ``fail`` decides the rest."""
        why = "the guard has not read the budget state yet" if not self._caught_up.is_set() else (
            f"the guard lost the Kafka brokers ({self._last_error})"
        )  # fmt: skip
        if known.action == "deny":
            self._counts["held"] += 1
            lost = "the guard read the topic to its end" if not self._caught_up.is_set() else "it lost the brokers"
            return replace(known, reason=f"{known.reason} (read before {lost}: it holds)")
        if self._fail == "open":
            self._counts["failed_open"] += 1
            if known.action != "allow":  # a downgrade or throttle read before still applies
                return known
            return Decision("allow", f"{why}: allowed (fail open)", model=known.model)
        self._counts["failed_closed"] += 1
        return Decision("deny", f"{why}: denied (fail closed)", model=known.model)

    def _on_error(self, error: KafkaError) -> None:
        self._last_error = error.str()
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if not self._brokers_down:  # once per outage: librdkafka reports every reconnect attempt
                logger.warning("spendstream guard: %s; %s meanwhile", error.str(), self._fail_word())
            self._brokers_down = True

    def _fail_word(self) -> str:
        rest = "other calls are allowed (fail open)" if self._fail == "open" else "other calls are denied (fail closed)"
        return f"kill switches and denying budgets read before hold, {rest}"

    def _reached(self, consumer: Consumer) -> bool:
        """Whether the brokers answer again while no record arrives (nothing new on the topic)."""
        try:
            consumer.list_topics(self._topic, timeout=1)
        except KafkaException:
            return False
        return True

    def _read_again(self, consumer: Consumer) -> None:
        """After an outage, read the topic again from its start.

        The brokers may have come back empty (a restarted embedded broker, whose worker publishes
        the kill switches and budget states again) or failed over: a position kept from before
        would then skip what was published since, or lie past the new end. States read before
        hold until a newer one (or a tombstone) replaces them.
        """
        self._brokers_down = False
        logger.info("spendstream guard: reached the brokers again; reading %s again from its start", self._topic)
        self._assign(consumer)

    def _run(self) -> None:
        consumer = Consumer(self._config)
        try:
            pending = self._assign(consumer)
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None:
                    if self._brokers_down and self._reached(consumer):
                        self._read_again(consumer)
                    continue
                if self._brokers_down:  # this record is read again, in order
                    self._read_again(consumer)
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                        if not pending:
                            self._caught_up.set()
                    else:
                        self._last_error = error.str()
                    continue
                self._apply(message.key(), message.value())
        except Exception as exc:  # never raise into the host application
            self._last_error = str(exc)
            self._brokers_down = True
            logger.error("spendstream guard stopped reading budget state: %s; calls are %s", exc, self._fail_word())
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> set[int]:
        while not self._stop.is_set():
            try:
                metadata = consumer.list_topics(self._topic, timeout=1)  # close() waits for it
                partitions = metadata.topics[self._topic].partitions
                if partitions:
                    consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
                    return set(partitions)
                self._last_error = f"topic {self._topic} has no partitions yet"
            except KafkaException as exc:
                self._last_error = str(exc)
            self._stop.wait(1.0)
        return set()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        scope = key.decode()
        if value is None:  # a tombstone: the kill switch was lifted
            with self._lock:
                self._states.pop(scope, None)
            return
        try:
            state = BudgetState.model_validate_json(value)
        except ValidationError as exc:
            logger.warning("spendstream guard: skipped a budget state it cannot read (%s)", exc)
            return
        with self._lock:
            self._states[scope] = state


def _decide(state: BudgetState, model: str | None, estimated_usd: float | None) -> Decision:
    """The decision of one state: what is in force, or what a call whose estimate passes the next
    action's mark (or, without thresholds, the limit) is treated as having reached."""
    action: GuardState = state.state
    reason = state.reason
    downgrade_to, throttle = state.downgrade_to, state.throttle_seconds
    step = state.next
    if step is not None:
        if (
            estimated_usd is not None
            and estimated_usd > step.usd
            and SEVERITY_ORDER[step.state] >= SEVERITY_ORDER[action]
        ):
            action, downgrade_to, throttle = step.state, step.downgrade_to, step.throttle_seconds
            reason = f"{reason}; this call's estimate (${estimated_usd:,.4f}) would pass the {step.at_pct}% threshold"
    elif (
        action == "allow" and estimated_usd is not None and state.remaining_usd is not None
        and estimated_usd > state.remaining_usd and state.action != "alert"
    ):  # fmt: skip
        action = state.action
        reason = f"{reason}; this call's estimate (${estimated_usd:,.4f}) would pass the limit"
    delay = (throttle or 0.0) if action in ("throttle", "downgrade") else 0.0
    if action == "downgrade":
        return Decision("downgrade", f"{reason}: use {downgrade_to}", state.scope, state.remaining_usd,
                        model=downgrade_to, delay_seconds=delay)  # fmt: skip
    return Decision(action, reason, state.scope, state.remaining_usd, model=model, delay_seconds=delay)
