"""The gate: a process in front of the embedded broker that decides when it may acknowledge new events.

The embedded broker (tansu, in-memory storage) acknowledges a record as soon as it holds it in
memory, and forgets it when it stops. The gate owns the broker process and stands on the public
port: every Kafka request passes through it unchanged, and it reads only each request's header
(and, for a Produce request, its acks and topic names) and each response's correlation id. So it
can **hold** Produce requests for the input topics (``llm.calls``, ``llm.outcomes``): a held
request is not forwarded and not answered, the producer keeps the events and sends them again to
the next broker. Before the broker stops, the gate holds, waits until every forwarded Produce was
answered, lets the worker catch up for a moment, and saves what the worker has not committed
(``spendstream.tail``), so that every acknowledged record is stored or saved.

It holds at start (until ``spendstream up`` has a worker reading the topics) and when told to
stop, and it stops, saving the tail, when its parent dies: standard input reaches end of file
when ``spendstream up`` exits in any way, SIGKILL included. It runs in a session of its own, so
Ctrl-C in a terminal reaches ``spendstream up`` only, which then stops the gate in order.

Control, one line each on standard input; the answer on standard output:
``open`` (``ok``), ``hold`` (``held``), ``drain SECONDS`` (``saved N``: hold, wait up to SECONDS for
the worker's commits to reach the log end, save the rest), ``stop`` (saves if not yet saved, stops
the broker, exits).

    python -m spendstream.gate --tansu BIN --port 9092 --broker-port 40001 --log broker.log \
        [--held-topics llm.calls,llm.outcomes --group spendstream --tail-dir DIR --exempt-client ID --closed]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

PRODUCE = 0
# Produce requests use flexible encodings from version 9 and name topics by id from version 13.
PRODUCE_FLEXIBLE = 9
PRODUCE_TOPIC_IDS = 13


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: int
    """Offset of the request body in the frame."""


@dataclass(frozen=True, slots=True)
class ProduceRequest:
    acks: int
    topics: tuple[str, ...] | None
    """None: named by topic id (version 13+), not known to the gate."""


def _uvarint(frame: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = frame[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip_tagged_fields(frame: bytes, pos: int) -> int:
    count, pos = _uvarint(frame, pos)
    for _ in range(count):
        _, pos = _uvarint(frame, pos)
        size, pos = _uvarint(frame, pos)
        pos += size
    return pos


def request_header(frame: bytes) -> RequestHeader:
    """The header of a request frame (without its 4-byte size)."""
    api_key, api_version, correlation_id, length = struct.unpack_from(">hhih", frame, 0)
    pos = 10
    client_id = None if length < 0 else frame[pos : pos + length].decode(errors="replace")
    pos += max(length, 0)
    if api_key == PRODUCE and api_version >= PRODUCE_FLEXIBLE:
        pos = _skip_tagged_fields(frame, pos)
    return RequestHeader(api_key, api_version, correlation_id, client_id, pos)


def produce_request(frame: bytes, header: RequestHeader) -> ProduceRequest:
    """The acks and topic names of a Produce request (versions 0 to 12; later versions name topic ids)."""
    version, pos = header.api_version, header.body
    flexible = version >= PRODUCE_FLEXIBLE

    def length(nullable_width: str) -> int:
        nonlocal pos
        if flexible:
            value, pos = _uvarint(frame, pos)
            return value - 1
        (value,) = struct.unpack_from(nullable_width, frame, pos)
        pos += struct.calcsize(nullable_width)
        return int(value)

    if version >= 3:
        skip = length(">h")  # transactional_id (a length read first: it moves pos)
        pos += max(skip, 0)
    acks, _timeout = struct.unpack_from(">hi", frame, pos)
    pos += 6
    names: list[str] = []
    for _ in range(length(">i")):
        if version >= PRODUCE_TOPIC_IDS:
            return ProduceRequest(acks, None)
        size = length(">h")
        names.append(frame[pos : pos + size].decode(errors="replace"))
        pos += size
        for _ in range(length(">i")):
            pos += 4  # partition index
            skip = length(">i")  # records
            pos += max(skip, 0)
            if flexible:
                pos = _skip_tagged_fields(frame, pos)
        if flexible:
            pos = _skip_tagged_fields(frame, pos)
    return ProduceRequest(acks, tuple(names))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the broker never outlives its gate


class Gate:
    """The proxy, the broker process it owns, and the control loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.held_topics = frozenset(t for t in args.held_topics.split(",") if t)
        self.open = asyncio.Event()
        if not args.closed:
            self.open.set()
        self.in_flight = 0
        self.answered = asyncio.Event()
        self.saved = False
        self.broker: subprocess.Popen[bytes] | None = None
        self.server: asyncio.Server | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.args.port}"

    def start_broker(self) -> None:
        url = f"tcp://127.0.0.1:{self.args.broker_port}"
        with Path(self.args.log).open("ab") as log:
            self.broker = subprocess.Popen(
                [self.args.tansu, "broker", "--listener-url", url, "--advertised-listener-url",
                 f"tcp://127.0.0.1:{self.args.port}", "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )  # fmt: skip

    async def wait_for_broker(self, timeout: float) -> None:
        assert self.broker is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.args.broker_port)
            except OSError:
                if self.broker.poll() is not None:
                    raise RuntimeError(f"the broker exited with {self.broker.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the broker did not listen within {timeout:.0f}s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def stop_broker(self) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.kill()  # in-memory storage: nothing to flush, and what it held is saved
            self.broker.wait()

    # -- the proxy ---------------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.args.broker_port)
        except OSError:
            writer.close()
            return
        waiting: set[int] = set()  # correlation ids of forwarded Produce requests to held topics
        tasks = {
            asyncio.ensure_future(self._requests(reader, upstream_writer, waiting)),
            asyncio.ensure_future(self._responses(upstream_reader, writer, waiting)),
        }
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the gate is stopping
            done, pending = set(), tasks
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                print(f"gate: connection closed ({task.exception()!r})", file=sys.stderr)
        for stream in (writer, upstream_writer):
            stream.close()
        # A request whose answer never reached its client was not acknowledged to it.
        self._settle(len(waiting))

    async def _requests(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, waiting: set[int]) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size_bytes = await reader.readexactly(4)
                frame = await reader.readexactly(struct.unpack(">i", size_bytes)[0])
                header = request_header(frame)
                if header.api_key == PRODUCE and self.held_topics and header.client_id != self.args.exempt_client:
                    try:
                        request = produce_request(frame, header)
                    except (IndexError, struct.error):  # not understood: held, and expected to be answered
                        request = ProduceRequest(-1, None)
                    if request.topics is None or self.held_topics.intersection(request.topics):
                        while not self.open.is_set():
                            await self.open.wait()
                        if request.acks != 0:
                            waiting.add(header.correlation_id)
                            self.in_flight += 1
                upstream.write(size_bytes)
                upstream.write(frame)
                await upstream.drain()

    async def _responses(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, waiting: set[int]) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await upstream.readexactly(8)
                size, correlation_id = struct.unpack(">ii", head)
                writer.write(head)
                remaining = size - 4
                while remaining > 0:
                    chunk = await upstream.read(min(remaining, 1 << 18))
                    if not chunk:
                        return
                    writer.write(chunk)
                    remaining -= len(chunk)
                    await writer.drain()
                await writer.drain()
                if correlation_id in waiting:
                    waiting.discard(correlation_id)
                    self._settle(1)

    def _settle(self, count: int) -> None:
        self.in_flight -= count
        if self.in_flight <= 0:
            self.answered.set()

    # -- control -----------------------------------------------------------------------------

    async def hold(self, timeout: float = 5.0) -> None:
        """Hold Produce requests to the input topics, and wait until those forwarded are answered."""
        self.open.clear()
        deadline = time.monotonic() + timeout
        while self.in_flight > 0 and time.monotonic() < deadline:
            self.answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), max(0.0, deadline - time.monotonic()))

    async def drain(self, seconds: float) -> int:
        """Hold, give the worker up to ``seconds`` to commit all, save the rest; how many records were saved."""
        from spendstream import tail

        await self.hold()
        topics, loop = sorted(self.held_topics), asyncio.get_running_loop()
        if not topics or not self.args.group:
            return 0
        deadline = time.monotonic() + seconds
        behind = await loop.run_in_executor(None, tail.read, self.bootstrap, self.args.group, topics)
        partitions = sorted({(record.topic, record.partition) for record in behind})
        while behind and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            done = await loop.run_in_executor(None, tail.committed, self.bootstrap, self.args.group, partitions)
            behind = [record for record in behind if record.offset >= done.get((record.topic, record.partition), -1)]
        saved = await loop.run_in_executor(None, tail.save, behind, Path(self.args.tail_dir))
        self.saved = True
        return saved

    async def control(self) -> None:
        loop = asyncio.get_running_loop()
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
        for stop in (signal.SIGTERM, signal.SIGINT):  # stopped by hand: as when the parent is gone
            loop.add_signal_handler(stop, commands.feed_eof)
        while True:
            line = (await commands.readline()).decode().split()
            if not line or line[0] == "stop":  # end of file: the parent is gone
                if not self.saved:
                    await self._answer(self.drain(0.0), "saved")
                return
            if line[0] == "open":
                self.open.set()
                self._say("ok")
            elif line[0] == "hold":
                await self.hold()
                self._say("held")
            elif line[0] == "drain":
                await self._answer(self.drain(float(line[1])), "saved")

    async def _answer(self, work: Awaitable[int], word: str) -> None:
        try:
            result = await work
        except Exception as exc:
            self._say(f"error {exc}")
        else:
            self._say(f"{word} {result}")

    @staticmethod
    def _say(line: str) -> None:
        with contextlib.suppress(OSError):  # the parent may be gone
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    async def run(self) -> int:
        self.start_broker()
        try:
            await self.wait_for_broker(self.args.timeout)
            self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.args.port, reuse_address=True)
        except (RuntimeError, OSError) as exc:
            self._say(f"error {exc}")
            self.stop_broker()
            return 1
        self._say("ready")
        try:
            await self.control()
        finally:
            self.server.close()
            self.stop_broker()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spendstream.gate", description=__doc__)
    parser.add_argument("--tansu", required=True)
    parser.add_argument("--port", type=int, required=True, help="the public port, on 127.0.0.1")
    parser.add_argument("--broker-port", type=int, required=True, help="the broker's own port, on 127.0.0.1")
    parser.add_argument("--log", required=True, help="the broker's log file")
    parser.add_argument("--held-topics", default="", help="comma-separated: the topics whose Produce requests wait")
    parser.add_argument("--group", default="", help="the consumer group whose commits say what is stored")
    parser.add_argument("--tail-dir", default="", help="where records not yet committed are saved")
    parser.add_argument("--exempt-client", default="", help="a client id never held (the replay of the tail)")
    parser.add_argument("--closed", action="store_true", help="hold from the start, until told to open")
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    return asyncio.run(Gate(args).run())


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
