"""The worker's member of its consumer group, remembered so that a killed worker's member goes at once.

A worker stopped in order leaves its group (aiokafka sends LeaveGroup). One killed (SIGKILL, the
OOM killer, a power loss) does not: its member stays in the group until its session expires
(``SPENDSTREAM_SESSION_TIMEOUT_S``), and the restarted worker's join waits for that expiry, then a
second rebalance follows it. With a Kafka cluster's 6 s that made a restarted worker store new
events only after about 12.7 s, against about 4.6 s after SIGTERM.

So the worker writes its member id and group to ``group-member.json`` in its data directory
whenever it is assigned partitions, and removes the file when it stops in order. A worker that
starts and finds the file removes that member from the group (LeaveGroup, as the member would have
sent itself) before it joins; failing that within :data:`LEAVE_TIMEOUT_S`, it logs why and joins
anyway, and the old member's session expires as before.

Two workers on one data directory (one ``SPENDSTREAM_HOME``) would evict each other's live member
at every start (a rebalance: nothing lost, but no use). The worker therefore holds a lock on
``group-member.lock`` for as long as it runs; the kernel releases it when the process dies, however
it dies. Only the holder removes a recorded member or records its own: a second worker on the same
directory does neither, and rejoins as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Any

import faust
import orjson
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import for_code
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.group import LeaveGroupRequest
from faust.transport.drivers import aiokafka as aiokafka_driver

logger = logging.getLogger(__name__)

MEMBER_FILE = "group-member.json"
"""The last member id and group of the worker on this data directory, while it runs."""
LOCK_FILE = "group-member.lock"
"""Held (``flock``) by the worker that owns :data:`MEMBER_FILE`, until its process ends."""
LEAVE_TIMEOUT_S = 3.0
"""The longest a starting worker spends removing its killed predecessor's member before it joins."""


class GroupMembership:
    """What a worker knows of its own member of its consumer group, kept in ``data_dir``.

    Args:
        data_dir: the worker's data directory (Faust's ``datadir``).
        servers: the Kafka bootstrap servers, ``host:port``.
        auth: aiokafka's security keyword arguments (``security_protocol``, ``sasl_*``, ``ssl_context``).
    """

    def __init__(self, data_dir: Path, servers: list[str], auth: dict[str, Any]) -> None:
        self.path = data_dir.resolve() / MEMBER_FILE
        self._servers = servers
        self._auth = auth
        self._lock: IO[bytes] | None = None
        self._recorded: tuple[str, str] | None = None

    @classmethod
    def of(cls, app: faust.App) -> GroupMembership:
        """The membership of ``app``'s worker: its data directory, brokers and security settings."""
        conf = app.conf
        auth = aiokafka_driver.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)
        return cls(Path(conf.datadir), aiokafka_driver.server_list(conf.broker, 9092), dict(auth))

    def watch(self, app: faust.App) -> None:
        """Record ``app``'s member each time its consumer is assigned partitions."""

        async def on_assigned(_: Any, /, *args: Any, signal: Any, **__: Any) -> None:
            coordinator = app.consumer._thread._consumer._coordinator  # type: ignore[attr-defined]
            self.record(str(coordinator.group_id), str(coordinator.member_id))

        app.on_partitions_assigned.connect(on_assigned, weak=False)

    def owned(self) -> bool:
        """Take the data directory's lock (once); False when another live process holds it."""
        if self._lock is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = (self.path.parent / LOCK_FILE).open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            return False
        self._lock = lock  # held until the process ends
        return True

    def record(self, group: str, member_id: str) -> None:
        """Write ``member_id`` of ``group`` to the member file, atomically, unless already there."""
        if (group, member_id) == self._recorded or not member_id or not self.owned():
            return
        staging = self.path.with_suffix(".tmp")
        staging.write_bytes(orjson.dumps({"group": group, "member_id": member_id}))
        os.replace(staging, self.path)
        self._recorded = (group, member_id)

    def forget(self) -> None:
        """Remove the member file: the worker stopped in order and has left its group itself."""
        if self._lock is not None:
            self.path.unlink(missing_ok=True)

    async def leave_stale(self, timeout: float = LEAVE_TIMEOUT_S) -> None:
        """Remove the member recorded by a worker that did not stop in order; log what was done, never raise."""
        if not self.path.exists():
            return
        if not self.owned():
            logger.warning(
                "another worker runs on %s (the same SPENDSTREAM_HOME): not removing the member it recorded",
                self.path.parent,
            )
            return
        try:
            recorded = orjson.loads(self.path.read_bytes())
            group, member_id = str(recorded["group"]), str(recorded["member_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("cannot read %s (%s): the previous worker's member expires with its session", self.path, exc)
            return
        try:
            removed = await asyncio.wait_for(self._leave(group, member_id), timeout)
        except Exception as exc:  # anything: the old member still expires with its session
            logger.warning(
                "could not remove member %s of the previous worker from group %s (%s); "
                "it expires with its session (SPENDSTREAM_SESSION_TIMEOUT_S)",
                member_id, group, exc or type(exc).__name__,
            )  # fmt: skip
            return
        if removed:
            logger.warning(
                "the previous worker did not stop in order: removed its stale member %s from group %s "
                "before joining (no wait for its session to expire)",
                member_id, group,
            )  # fmt: skip
        else:
            logger.info("the previous worker's member %s is no longer in group %s", member_id, group)

    async def _leave(self, group: str, member_id: str) -> bool:
        """Remove ``member_id`` from ``group`` if it is still there; True if it was."""
        client = AIOKafkaClient(bootstrap_servers=self._servers, request_timeout_ms=2_000, **self._auth)
        try:
            await client.bootstrap()
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            (described,) = (await client.send(node, DescribeGroupsRequest([group]))).groups
            if (error := for_code(described[0])).errno != 0:
                raise error()
            if member_id not in {member[0] for member in described[5]}:
                return False
            left = await client.send(node, LeaveGroupRequest(group, member_id))
            if (error := for_code(left.error_code)).errno != 0:
                raise error()
            return True
        finally:
            with contextlib.suppress(Exception):
                await client.close()
