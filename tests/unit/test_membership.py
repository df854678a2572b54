"""The worker's record of its group member: written atomically, owned by one process, never fatal."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streams.membership import LOCK_FILE, MEMBER_FILE, GroupMembership
from tests.conftest import free_port


def test_the_member_is_recorded_once_and_forgotten_after_a_clean_stop(tmp_path: Path) -> None:
    membership = GroupMembership(tmp_path / "faust", ["127.0.0.1:9092"], {})
    membership.record("spendstream", "member-1")
    assert orjson.loads((tmp_path / "faust" / MEMBER_FILE).read_bytes()) == {
        "group": "spendstream",
        "member_id": "member-1",
    }
    membership.record("spendstream", "member-2")  # a rejoin with a new id replaces it
    assert orjson.loads(membership.path.read_bytes())["member_id"] == "member-2"
    assert [p.name for p in membership.path.parent.iterdir() if p.suffix == ".tmp"] == []
    membership.forget()
    assert not membership.path.exists()


def test_a_second_worker_on_the_same_home_neither_records_nor_removes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "faust"
    data_dir.mkdir()
    (data_dir / MEMBER_FILE).write_bytes(orjson.dumps({"group": "spendstream", "member_id": "live"}))
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,sys,time; f=open({str(data_dir / LOCK_FILE)!r},'ab'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        second = GroupMembership(data_dir, ["127.0.0.1:1"], {})
        with caplog.at_level(logging.INFO, logger="streams.membership"):
            asyncio.run(second.leave_stale())
        assert "another worker runs on" in caplog.text
        second.record("spendstream", "mine")
        assert orjson.loads((data_dir / MEMBER_FILE).read_bytes())["member_id"] == "live"
        second.forget()
        assert (data_dir / MEMBER_FILE).exists()
    finally:
        holder.kill()
        holder.wait()


def test_an_unreachable_broker_is_logged_and_the_worker_goes_on_within_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    membership = GroupMembership(tmp_path, [f"127.0.0.1:{free_port()}"], {})
    membership.record("spendstream", "stale")
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="streams.membership"):
        asyncio.run(membership.leave_stale(timeout=1.0))
    assert time.monotonic() - began < 5
    assert "could not remove member stale of the previous worker from group spendstream" in caplog.text


def test_an_unreadable_record_is_logged_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / MEMBER_FILE).write_bytes(b"{not json")
    with caplog.at_level(logging.WARNING, logger="streams.membership"):
        asyncio.run(GroupMembership(tmp_path, ["127.0.0.1:1"], {}).leave_stale())
    assert "cannot read" in caplog.text
