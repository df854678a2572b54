"""track(): timing, usage from the providers' own response types, the call tree, pseudonymous users."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message, RawContentBlockDeltaEvent, RawMessageDeltaEvent, RawMessageStartEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from producers import SDKError, Tracker, carry_context, current_trace, pseudonymize
from schemas.call_event import CallEvent

KEY = "k" * 32
# the HTTP package the provider SDKs build their errors from (httpx, or httpx2 in newer releases)
httpx: Any = getattr(openai._exceptions, "httpx2", None) or getattr(openai._exceptions, "httpx")  # noqa: B009


class Collected:
    """The tracker's event sink in these tests: what an Emitter would have sent."""

    def __init__(self) -> None:
        self.events: list[CallEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: CallEvent) -> None:
        with self._lock:
            self.events.append(event)

    def one(self) -> CallEvent:
        assert len(self.events) == 1, self.events
        return self.events[0]


@pytest.fixture
def sent() -> Collected:
    return Collected()


@pytest.fixture
def tracker(sent: Collected) -> Tracker:
    return Tracker(sent, user_id_key=KEY, feature="sales.email_draft", environment="staging")


def chat_completion(**usage: Any) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}},
            ],
            "usage": usage,
        }
    )


def anthropic_message(**usage: Any) -> Message:
    return Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    )


def test_openai_chat_usage_keeps_cached_and_reasoning_tokens(tracker: Tracker, sent: Collected) -> None:
    response = chat_completion(
        prompt_tokens=1200,
        completion_tokens=400,
        total_tokens=1600,
        prompt_tokens_details={"cached_tokens": 1000},
        completion_tokens_details={"reasoning_tokens": 256},
    )
    with tracker.track(provider="openai") as call:
        assert call.record(response) is response

    event = sent.one()
    assert event.model == "gpt-4o-2024-08-06"
    assert (event.input_tokens, event.cache_read_tokens) == (1200, 1000)
    assert (event.output_tokens, event.reasoning_tokens) == (400, 256)
    assert event.feature == "sales.email_draft" and event.environment == "staging"
    assert event.status == "success" and event.latency_ms is not None and event.ttft_ms is None


def test_openai_responses_api_usage(tracker: Tracker, sent: Collected) -> None:
    response = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1_700_000_000,
            "model": "o4-mini",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 900,
                "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 0},
                "output_tokens": 700,
                "output_tokens_details": {"reasoning_tokens": 600},
                "total_tokens": 1600,
            },
        }
    )
    with tracker.track(provider="openai", model="o4-mini") as call:
        call.record(response)

    event = sent.one()
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens, event.reasoning_tokens) == (
        900,
        512,
        700,
        600,
    )


def test_anthropic_cache_reads_and_writes_are_added_to_input(tracker: Tracker, sent: Collected) -> None:
    response = anthropic_message(
        input_tokens=50, output_tokens=300, cache_read_input_tokens=2000, cache_creation_input_tokens=1000
    )
    with tracker.track(provider="anthropic") as call:
        call.record(response)

    event = sent.one()
    assert event.model == "claude-sonnet-4-5"
    assert event.input_tokens == 3050  # every prompt token, cached ones included
    assert (event.cache_read_tokens, event.cache_write_tokens, event.output_tokens) == (2000, 1000, 300)


def test_anthropic_stream_records_ttft_and_final_usage(tracker: Tracker, sent: Collected) -> None:
    start = RawMessageStartEvent.model_validate(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 800, "output_tokens": 1, "cache_read_input_tokens": 200},
            },
        }
    )
    delta = RawContentBlockDeltaEvent.model_validate(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}
    )
    end = RawMessageDeltaEvent.model_validate(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 120},
        }
    )

    with tracker.track(provider="anthropic") as call:
        chunks = list(call.stream(iter([start, delta, end])))

    assert chunks == [start, delta, end]
    event = sent.one()
    assert event.model == "claude-haiku-4-5"
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (1000, 200, 120)
    assert event.ttft_ms is not None and event.latency_ms is not None and event.ttft_ms <= event.latency_ms


def test_openai_async_stream_with_usage_chunk(tracker: Tracker, sent: Collected) -> None:
    def chunk(content: str | None, usage: dict[str, Any] | None = None) -> ChatCompletionChunk:
        choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
        return ChatCompletionChunk.model_validate(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "gpt-4o-mini",
                "choices": choices,
                "usage": usage,
            }
        )

    async def stream() -> Any:
        for item in (
            chunk("He"),
            chunk("llo"),
            chunk(None, {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}),
        ):
            await asyncio.sleep(0.01)
            yield item

    async def main() -> int:
        async with tracker.track(provider="openai") as call:
            return len([c async for c in call.astream(stream())])

    assert asyncio.run(main()) == 3
    event = sent.one()
    assert (event.model, event.input_tokens, event.output_tokens) == ("gpt-4o-mini", 40, 2)
    assert event.ttft_ms is not None and event.ttft_ms >= 10


def test_nested_calls_share_the_trace_and_point_to_their_parent(tracker: Tracker, sent: Collected) -> None:
    with tracker.track(provider="openai", model="gpt-4o", agent_id="coordinator") as root:
        assert current_trace() == (root.trace_id, root.event_id)
        with (
            tracker.attribute(agent_id="code_agent"),
            tracker.track(provider="anthropic", model="claude-sonnet-4-5") as child,
            tracker.track(provider="internal", kind="tool", tool_name="syntax_check") as grandchild,
        ):
            pass
    assert current_trace() is None

    by_id = {e.event_id: e for e in sent.events}
    assert by_id[root.event_id].parent_id is None and by_id[root.event_id].trace_id == root.event_id
    assert by_id[child.event_id].parent_id == root.event_id
    assert by_id[grandchild.event_id].parent_id == child.event_id
    assert {e.trace_id for e in sent.events} == {root.event_id}
    assert by_id[child.event_id].agent_id == "code_agent" and by_id[root.event_id].agent_id == "coordinator"
    assert by_id[grandchild.event_id].kind == "tool"


def test_the_trace_follows_asyncio_tasks_and_threads(tracker: Tracker, sent: Collected) -> None:
    def sub_agent(name: str) -> None:
        with tracker.track(provider="openai", model="gpt-4o-mini", agent_id=name):
            pass

    async def sub_agent_async(name: str) -> None:
        async with tracker.track(provider="openai", model="gpt-4o-mini", agent_id=name):
            await asyncio.sleep(0)

    async def main() -> str:
        async with tracker.track(provider="openai", model="gpt-4o") as root:
            await asyncio.gather(sub_agent_async("a"), sub_agent_async("b"))
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(carry_context(sub_agent), ["c", "d"]))
            return root.event_id

    root_id = asyncio.run(main())
    children = [e for e in sent.events if e.event_id != root_id]
    assert sorted(e.agent_id or "" for e in children) == ["a", "b", "c", "d"]
    assert all(e.parent_id == root_id and e.trace_id == root_id for e in children)


def test_a_root_call_can_join_an_incoming_trace(tracker: Tracker, sent: Collected) -> None:
    with tracker.track(provider="openai", model="gpt-4o", trace_id="req-42", parent_id="gateway-span"):
        pass
    event = sent.one()
    assert (event.trace_id, event.parent_id) == ("req-42", "gateway-span")


def test_exceptions_are_recorded_with_their_status_and_raised(tracker: Tracker, sent: Collected) -> None:
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
    rate_limited = anthropic.RateLimitError("slow down", response=httpx.Response(429, request=request), body=None)
    for exc, status in [
        (openai.APITimeoutError(request=request), "timeout"),
        (rate_limited, "rate_limited"),
        (ValueError("bad"), "error"),
    ]:
        with pytest.raises(type(exc)), tracker.track(provider="openai", model="gpt-4o"):
            raise exc
        assert (sent.events[-1].status, sent.events[-1].error_type) == (status, type(exc).__name__)


def test_decorator_tracks_each_invocation_and_records_returned_usage(tracker: Tracker, sent: Collected) -> None:
    @tracker.track(provider="anthropic", feature="support.triage")
    def answer(question: str) -> Message:
        return anthropic_message(input_tokens=10, output_tokens=5)

    @tracker.track(provider="openai", model="gpt-4o-mini")
    async def summarize() -> ChatCompletion:
        return chat_completion(prompt_tokens=30, completion_tokens=3, total_tokens=33)

    answer("a")
    answer("b")
    asyncio.run(summarize())

    assert [e.feature for e in sent.events] == ["support.triage", "support.triage", "sales.email_draft"]
    assert [e.input_tokens for e in sent.events] == [10, 10, 30]
    assert len({e.event_id for e in sent.events}) == 3


def test_user_ids_leave_the_process_pseudonymized(tracker: Tracker, sent: Collected) -> None:
    with (
        tracker.attribute(user_id="alice@example.com", tenant_id="acme"),
        tracker.track(provider="openai", model="gpt-4o"),
    ):
        pass
    event = sent.one()
    assert event.user_id == pseudonymize("alice@example.com", KEY.encode())
    assert event.user_id is not None and "alice" not in event.user_id and event.user_id.startswith("u_")
    assert pseudonymize("alice@example.com", b"another-key-of-32-bytes-long!!!!") != event.user_id


def test_a_user_id_without_a_key_is_refused_before_the_call(sent: Collected, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPENDSTREAM_USER_ID_KEY", raising=False)
    tracker = Tracker(sent)
    with pytest.raises(SDKError, match="SPENDSTREAM_USER_ID_KEY"):
        tracker.track(provider="openai", model="gpt-4o", user_id="alice")
    with pytest.raises(SDKError, match="at least 16"):
        Tracker(sent, user_id_key="short")
    assert sent.events == []


def test_an_invalid_event_is_counted_not_raised(tracker: Tracker, sent: Collected) -> None:
    with tracker.track(provider="openai", model="gpt-4o") as call:
        call.usage(input_tokens=10, cache_read_tokens=50)  # more cached than sent: refused by the schema
    assert sent.events == []
    assert tracker.stats().invalid == 1 and tracker.stats().tracked == 0


def test_unknown_attribution_is_refused(sent: Collected) -> None:
    with pytest.raises(SDKError, match="unknown attribution"):
        Tracker(sent, featur="typo")
