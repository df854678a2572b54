"""Session fixtures: a real tansu broker, one chDB engine, and factories for ``spendstream up`` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from sinks.clickhouse import connect
from spendstream.broker import EmbeddedBroker, port_open
from tests.slack_standin import SlackStandIn

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker (in-memory storage) on a free loopback port; yields its bootstrap address."""
    tansu = EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker") / "broker.log")
    tansu.start()
    yield tansu.bootstrap
    tansu.stop()


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one chDB engine of this test process (chDB allows one data path per process)."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def database() -> str:
    """A database name of its own for each test."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ch(chdb_dsn: str) -> Iterator[Client]:
    client = connect(chdb_dsn)
    yield client
    client.close()


class UpProcess:
    """A ``spendstream up`` child process against the session broker, with its own chDB and SQL port."""

    def __init__(self, home: Path, bootstrap: str, extra_env: dict[str, str]) -> None:
        self.home = home
        self.sql_port = free_port()
        self.env = {
            **os.environ,
            "SPENDSTREAM_HOME": str(home),
            "SPENDSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "SPENDSTREAM_SQL_PORT": str(self.sql_port),
            "SPENDSTREAM_SESSION_TIMEOUT_S": "6",
            "SPENDSTREAM_BATCH_SECONDS": "0.3",
            **extra_env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "up.log"
        self._client: Client | None = None

    def start(self, timeout: float = 60) -> UpProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "spendstream.cli", "up", "--log-level", "INFO"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
            )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.sql_port):
            if self.process.poll() is not None:
                raise AssertionError(f"spendstream up exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"spendstream up did not serve SQL: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def client(self) -> Client:
        if self._client is None:
            self._client = clickhouse_connect.get_client(host="127.0.0.1", port=self.sql_port, database="spendstream")
        return self._client

    def scalar(self, query: str) -> object:
        return self.client().query(query).result_rows[0][0]

    def wait_for(self, query: str, expected: object, timeout: float = 60) -> object:
        """Poll ``query`` until it returns ``expected``; return the last value either way."""
        deadline = time.monotonic() + timeout
        value: object = None
        while time.monotonic() < deadline:
            value = self.scalar(query)
            if value == expected:
                return value
            time.sleep(0.3)
        return value

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it still runs 20 s later."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class WorkerProcess:
    """A ``spendstream worker`` process writing to the engine of ``up`` over its SQL endpoint, as admin.

    It reads the broker and topics of ``up`` (its environment), unless ``extra_env`` says otherwise.
    """

    def __init__(self, up: UpProcess, home: Path, extra_env: dict[str, str] | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        token = (up.home / "sql-admin-token").read_text().strip()
        self.env = {
            **up.env,
            "SPENDSTREAM_HOME": str(home),
            "SPENDSTREAM_CLICKHOUSE_URL": f"http://admin:{token}@127.0.0.1:{up.sql_port}/spendstream",
            **(extra_env or {}),
        }
        self.log = home / "worker.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "spendstream.cli", "worker", "--log-level", "INFO"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=home,
            )  # fmt: skip

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def start_up(broker: str, tmp_path: Path) -> Iterator[Callable[..., UpProcess]]:
    """Start ``spendstream up`` processes; each test has topics and a consumer group of its own (a topic prefix)."""
    started: list[UpProcess] = []

    def factory(home: Path | None = None, **extra_env: str) -> UpProcess:
        extra_env.setdefault("SPENDSTREAM_TOPIC_PREFIX", f"t{uuid.uuid4().hex[:8]}.")
        proc = UpProcess(home or tmp_path / "home", broker, extra_env).start()
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``spendstream worker`` processes beside an ``up`` (see :class:`WorkerProcess`); stopped after the test."""
    started: list[WorkerProcess] = []

    def factory(up: UpProcess, home: Path, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(up, home, extra_env)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    """A local Slack Web API stand-in (a real HTTP server) recording what is posted."""
    standin = SlackStandIn()
    yield standin
    standin.close()


class EmbeddedUpProcess(UpProcess):
    """A ``spendstream up`` with its own embedded broker (no ``SPENDSTREAM_KAFKA_BOOTSTRAP``) on ``broker_port``."""

    def __init__(self, home: Path, broker_port: int, extra_env: dict[str, str]) -> None:
        super().__init__(home, "", extra_env)
        del self.env["SPENDSTREAM_KAFKA_BOOTSTRAP"]
        if "SPENDSTREAM_SESSION_TIMEOUT_S" not in extra_env:  # the embedded broker's own default, as users run it
            del self.env["SPENDSTREAM_SESSION_TIMEOUT_S"]
        self.broker_port = broker_port
        self.env["SPENDSTREAM_BROKER_PORT"] = str(broker_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"


@pytest.fixture
def start_embedded_up(tmp_path: Path) -> Iterator[Callable[..., EmbeddedUpProcess]]:
    """Start ``spendstream up`` processes with their own broker; a restart passes the same home and broker port."""
    started: list[EmbeddedUpProcess] = []

    def factory(home: Path | None = None, broker_port: int | None = None, **extra_env: str) -> EmbeddedUpProcess:
        proc = EmbeddedUpProcess(home or tmp_path / "home", broker_port or free_port(), extra_env).start()
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()
