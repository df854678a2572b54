"""Tool calls' arguments through the real SDK and ``spendstream up``: only their args_hash is stored."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from producers import Emitter, Tracker
from producers._args import args_hash, args_key
from tests.conftest import UpProcess

pytestmark = pytest.mark.integration

KEY = b"integration-user-id-key"


def tracker_for(up: UpProcess, broker: str) -> tuple[Tracker, Emitter]:
    emitter = Emitter(broker, topic=up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.calls")
    return Tracker(emitter, user_id_key=KEY, feature="support.agent"), emitter


def test_a_tool_calls_args_hash_is_stored_and_its_arguments_are_not(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    up = start_up()
    tracker, emitter = tracker_for(up, broker)
    session = f"s-{uuid.uuid4().hex[:8]}"
    args = {"order_id": "A-1001-canary", "fields": ["status", "eta"]}
    with tracker.attribute(session_id=session):
        with tracker.track(provider="internal", kind="tool", tool_name="order_status", args=args):
            pass
        with tracker.track(provider="openai", model="gpt-4o-mini") as call:
            call.usage(input_tokens=100, output_tokens=10)
    assert emitter.close().delivered == 2

    query = f"SELECT groupArray((kind, tool_name, args_hash)) FROM llm_calls WHERE session_id = '{session}'"
    stored = up.wait_for(f"SELECT count() FROM llm_calls WHERE session_id = '{session}'", 2)
    assert stored == 2
    assert sorted(up.scalar(query)) == [  # type: ignore[arg-type]
        ("llm", "", ""),
        ("tool", "order_status", args_hash(args, args_key(KEY))),
    ]
    rows_holding = "SELECT count() FROM llm_calls WHERE position(toString(tuple(*)), '{}') > 0"
    assert up.scalar(rows_holding.format("order_status")) == 1  # the search sees a row's every column ...
    assert up.scalar(rows_holding.format("canary")) == 0  # ... and no argument is in any


def test_a_session_calling_one_tool_with_the_same_arguments_raises_loop_detected_naming_it(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    up = start_up()
    tracker, emitter = tracker_for(up, broker)
    paging, looping = f"paging-{uuid.uuid4().hex[:8]}", f"looping-{uuid.uuid4().hex[:8]}"
    with tracker.attribute(session_id=paging):  # one tool, other arguments each time: no loop
        for page in range(10):
            with tracker.track(
                provider="internal", kind="tool", tool_name="search_docs", args={"q": "sso", "page": page}
            ):
                pass
    assert emitter.flush(10) == 0
    assert up.wait_for(f"SELECT count() FROM llm_calls WHERE session_id = '{paging}'", 10) == 10
    with tracker.attribute(session_id=looping):  # the same call three times, a model call before each
        for _ in range(3):
            with tracker.track(provider="openai", model="gpt-4o-mini") as call:
                call.usage(input_tokens=2000, output_tokens=100)
            with tracker.track(provider="internal", kind="tool", tool_name="search_docs", args={"page": 0, "q": "sso"}):
                pass
    assert emitter.close().delivered == 16

    loops = "SELECT count() FROM alerts FINAL WHERE kind = 'loop_detected' AND status = 'firing'"
    assert up.wait_for(loops, 1) == 1
    key, message = (
        up.client()
        .query("SELECT key, message FROM alerts FINAL WHERE kind = 'loop_detected' AND status = 'firing'")
        .result_rows[0]
    )
    assert key == looping  # the paging session, stored and judged before it, raised nothing
    assert "it called search_docs 3 times with the same arguments" in message
