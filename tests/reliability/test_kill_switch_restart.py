"""A kill switch holds across restarts of ``spendstream up`` (its own in-memory broker): stopped with SIGTERM
or SIGKILL and started again on the same home and broker port, a new guard denies the killed calls again
and ``spendstream budgets`` lists the kill; a kill set while ``up`` is down is set once it is back; a
lifted kill stays lifted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from producers import BudgetGuard
from spendstream.broker import port_open
from tests.conftest import EmbeddedUpProcess

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def cli(up: EmbeddedUpProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args], env=up.env, capture_output=True, text=True, timeout=60
    )


def guard_seeing(up: EmbeddedUpProcess, scope: str, timeout: float = 30) -> tuple[BudgetGuard, float]:
    """A new guard (an application started after the restart) once it reads ``scope``; and how long that took."""
    started = time.monotonic()
    guard = BudgetGuard(up.bootstrap)
    while guard.state(scope) is None:
        if time.monotonic() - started > timeout:
            guard.close()
            raise AssertionError(
                f"no guard reads {scope} {timeout:.0f}s after the restart: {up.log.read_text()[-2000:]}"
            )
        time.sleep(0.05)
    return guard, time.monotonic() - started


def restart(up: EmbeddedUpProcess, start: Callable[..., EmbeddedUpProcess], stop: signal.Signals) -> EmbeddedUpProcess:
    assert up.process is not None
    up.process.send_signal(stop)
    up.process.wait(30)
    return start(up.home, broker_port=up.broker_port)


def test_a_kill_switch_holds_across_restarts_of_up_and_a_lifted_one_stays_lifted(
    start_embedded_up: Callable[..., EmbeddedUpProcess], tmp_path: Path
) -> None:
    up = start_embedded_up(tmp_path / "home")
    assert cli(up, "kill", "--agent", "coder", "--reason", "loops on order_status").returncode == 0
    guard, _ = guard_seeing(up, "kill:agent_id=coder", timeout=10)
    assert guard.check(agent_id="coder").action == "deny"
    guard.close()

    # SIGTERM (a restart to apply a config change)
    up = restart(up, start_embedded_up, signal.SIGTERM)
    guard, after_sigterm = guard_seeing(up, "kill:agent_id=coder")
    assert guard.wait_ready(10)
    denied = guard.check(agent_id="coder")
    assert denied.action == "deny" and denied.reason.endswith(
        "kill switch on calls of agent_id coder: loops on order_status"
    )
    assert guard.check(agent_id="planner").action == "allow"
    guard.close()
    listed = cli(up, "budgets")
    assert listed.returncode == 0 and "kill:agent_id=coder" in listed.stdout, listed

    lifted = cli(up, "unkill", "--agent", "coder")
    assert lifted.returncode == 0, lifted
    guard = BudgetGuard(up.bootstrap)  # the tombstone on the partition of the state the worker published
    assert guard.wait_ready(10) and guard.state("kill:agent_id=coder") is None
    guard.close()
    # SIGKILL; then a kill set while `up` is down: recorded, set when it is back
    assert up.process is not None
    up.process.send_signal(signal.SIGKILL)
    up.process.wait(30)
    while port_open("127.0.0.1", up.broker_port):  # the gate saves the tail and stops the broker
        time.sleep(0.1)
    while_down = cli(up, "kill", "--tool", "send_email", "--reason", "mail provider incident")
    assert while_down.returncode == 1 and "it is recorded" in while_down.stderr, while_down
    up = start_embedded_up(up.home, broker_port=up.broker_port)
    seen, after_sigkill = guard_seeing(up, "kill:tool_name=send_email")
    seen.close()
    guard = BudgetGuard(up.bootstrap)  # reads the topic to its end: everything the worker published at start
    assert guard.wait_ready(10)
    assert guard.check(tool_name="send_email").action == "deny"
    assert guard.state("kill:agent_id=coder") is None
    assert guard.check(agent_id="coder").action == "allow"
    guard.close()
    listed = cli(up, "budgets")
    assert listed.returncode == 0 and "kill:tool_name=send_email" in listed.stdout, listed
    assert "kill:agent_id=coder" not in listed.stdout, listed
    print(
        f"\na new guard read the kill {after_sigterm:.1f} s after `up` answered SQL (SIGTERM), "
        f"{after_sigkill:.1f} s (SIGKILL)"
    )


def test_a_kill_lifted_while_up_is_down_stays_lifted_when_it_is_back(
    start_embedded_up: Callable[..., EmbeddedUpProcess], tmp_path: Path
) -> None:
    """`unkill` reads the kill switches' record as well as the topic: the record holds when no broker answers."""
    up = start_embedded_up(tmp_path / "home")
    assert cli(up, "kill", "--agent", "coder", "--reason", "loops on order_status").returncode == 0
    assert cli(up, "kill", "--agent", "planner", "--reason", "plans forever").returncode == 0
    assert up.process is not None
    up.process.send_signal(signal.SIGTERM)
    up.process.wait(30)
    while port_open("127.0.0.1", up.broker_port):
        time.sleep(0.1)

    lifted = cli(up, "unkill", "--agent", "coder", "--timeout", "3")
    assert lifted.returncode == 1, lifted
    assert "it is recorded as lifted: guards allow these calls once a worker starts" in lifted.stderr, lifted
    typo = cli(up, "unkill", "--agent", "coder", "--timeout", "3")
    assert typo.returncode == 1 and "cannot read the kill switches" in typo.stderr, typo

    up = start_embedded_up(up.home, broker_port=up.broker_port)
    guard, _ = guard_seeing(up, "kill:agent_id=planner")  # the worker has published the record
    try:
        assert guard.check(agent_id="planner").action == "deny"
        assert guard.check(agent_id="coder").action == "allow"
        assert guard.state("kill:agent_id=coder") is None
    finally:
        guard.close()
