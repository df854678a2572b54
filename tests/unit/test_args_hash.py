"""A tool call's arguments leave the process only as their args_hash: canonical, keyed, on the fast path."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
import string
from datetime import date
from typing import Any

import orjson
import pytest

from producers import SDKError, Tracker
from producers._args import args_hash, args_key, canonical_json
from schemas.call_event_decoder import CleanCallEvent, decode_clean
from streams.ingest import Ingestor, RawEvent
from streams.pricing import Pricer
from tests.unit.test_track import Collected

KEY = b"0123456789abcdef0123"


def sent_hash(tracker: Tracker, sent: Collected, args: Any, **fields: Any) -> str | None:
    with tracker.track(provider="internal", kind="tool", tool_name="search", args=args, **fields):
        pass
    return sent.events[-1].args_hash


def test_the_same_arguments_in_another_key_order_hash_the_same_and_others_do_not() -> None:
    sent = Collected()
    tracker = Tracker(sent, stuck=None)
    first = sent_hash(tracker, sent, {"query": "refund policy", "filters": {"lang": "en", "top": 5}, "ids": [1, 2]})
    again = sent_hash(tracker, sent, {"ids": [1, 2], "filters": {"top": 5, "lang": "en"}, "query": "refund policy"})
    assert first == again and first is not None and re.fullmatch("[0-9a-f]{16}", first)
    others = [
        {"query": "refund policy", "filters": {"lang": "en", "top": 6}, "ids": [1, 2]},  # a nested value
        {"query": "refund policy", "filters": {"lang": "en", "top": 5}, "ids": [2, 1]},  # list order counts
        {"query": "refund policy ", "filters": {"lang": "en", "top": 5}, "ids": [1, 2]},
        {"query": "refund policy", "filters": {"lang": "en", "top": 5}},
        {},
        [],
        "refund policy",
    ]
    hashes = {sent_hash(tracker, sent, args) for args in others}
    assert len(hashes) == len(others) and first not in hashes


def test_the_canonical_form_is_sorted_compact_json() -> None:
    @dataclasses.dataclass
    class Query:
        text: str
        top: int

    assert canonical_json({"b": 1, "a": {"d": [1, 2.5, None, True], "c": "é"}}) == (
        '{"a":{"c":"é","d":[1,2.5,null,true]},"b":1}'.encode()
    )
    assert canonical_json((1, "x")) == canonical_json([1, "x"])  # a tuple is a list
    assert canonical_json({2: "b", 1: "a"}) == b'{"1":"a","2":"b"}'
    dated = canonical_json({"on": date(2026, 12, 4), "q": Query("x", 3)})
    assert dated == b'{"on":"2026-12-04","q":{"text":"x","top":3}}'
    # what another language gets from the same steps: BLAKE2b, 8 bytes, over the canonical JSON
    assert args_hash({"a": 1}) == hashlib.blake2b(b'{"a":1}', digest_size=8).hexdigest()


def test_with_the_user_id_key_the_hash_is_keyed_and_processes_sharing_the_key_agree() -> None:
    plain, keyed, other = Collected(), Collected(), Collected()
    args = {"order_id": 12345}
    unkeyed = sent_hash(Tracker(plain, stuck=None), plain, args)
    assert unkeyed == args_hash(args)  # anyone could confirm a guess of 12345 from it ...
    with_key = sent_hash(Tracker(keyed, stuck=None, user_id_key=KEY), keyed, args)
    assert with_key not in (None, unkeyed)  # ... not without the key
    assert with_key == sent_hash(Tracker(keyed, stuck=None, user_id_key=KEY), keyed, {"order_id": 12345})
    assert with_key != sent_hash(Tracker(other, stuck=None, user_id_key=b"another key of 16+ bytes"), other, args)
    assert args_key(KEY) != KEY and len(args_key(KEY)) == 32  # the user id key itself is never the hash's key


def test_arguments_json_cannot_say_are_sent_without_a_hash_and_the_log_shows_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = Collected()
    tracker = Tracker(sent, stuck=None)
    with caplog.at_level(logging.WARNING, "spendstream.producers"):
        for args in [{"ids": {"secret-value-1"}}, {"blob": b"secret-value-2"}, {"n": 2**70}]:
            assert sent_hash(tracker, sent, args) is None
    assert len(sent.events) == 3 and tracker.stats().tracked == 3  # the calls are tracked all the same
    assert "arguments of tool search cannot be written as JSON" in caplog.text and "set" in caplog.text
    assert "secret-value" not in caplog.text and str(2**70) not in caplog.text


def test_args_are_refused_where_they_mean_nothing_saying_what_to_do() -> None:
    tracker = Tracker(Collected(), stuck=None)
    with pytest.raises(SDKError, match=r"args= is for a tool call's arguments: track it with kind='tool'"):
        tracker.track(provider="openai", model="gpt-4o", args={"q": 1})
    with pytest.raises(SDKError, match=r"args_hash= is for a tool call's arguments"):
        tracker.track(provider="openai", model="gpt-4o", args_hash="ab12")
    with pytest.raises(SDKError, match="both args= and args_hash= given"):
        tracker.track(provider="internal", kind="tool", tool_name="search", args={"q": 1}, args_hash="ab12")


def test_a_hash_made_elsewhere_is_sent_as_given() -> None:
    sent = Collected()
    assert sent_hash(Tracker(sent, stuck=None), sent, None, args_hash="c0ffee") == "c0ffee"


def test_tool_calls_with_the_sdks_args_hash_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash does not send its call to the model, unless all its digits are decimal (about 2 in 10,000: the
    Arrow text check looks for card-like digit runs, and the model decides a hex digest is a digest)."""
    rng = random.Random(7)
    sent = Collected()
    tracker = Tracker(sent, stuck=None, session_id="s-1")
    for n in range(2000):
        args = {"query": "".join(rng.choices(string.ascii_letters, k=12)), "page": n, "id": rng.getrandbits(64)}
        with tracker.track(provider="internal", kind="tool", tool_name="search", args=args) as call:
            call.usage(input_tokens=10)
    raws = [orjson.dumps(event.model_dump(mode="json", exclude_none=True)) for event in sent.events]
    assert all(isinstance(decode_clean(raw), CleanCallEvent) for raw in raws)
    modelled: list[int] = []
    validate = Ingestor._validate

    def counted(self: Ingestor, record: RawEvent, rejected: list[Any]) -> Any:
        modelled.append(record.offset)
        return validate(self, record, rejected)

    monkeypatch.setattr(Ingestor, "_validate", counted)
    result = Ingestor(Pricer(), "llm.calls").process(RawEvent(raw, 0, n) for n, raw in enumerate(raws))
    hashes = [event.args_hash or "" for event in sent.events]
    assert set(modelled) <= {n for n, digest in enumerate(hashes) if digest.isdigit()} and len(modelled) <= 2
    assert len(result.calls) == 2000 and len(set(hashes)) == 2000 and not result.rejected


def test_args_given_to_a_decorator_are_refused_they_would_make_every_call_a_repeat() -> None:
    tracker = Tracker(Collected())
    with pytest.raises(SDKError, match=r"args given to @track on '.*lookup' would be the same for every call"):

        @tracker.track(provider="internal", kind="tool", tool_name="lookup", args={"k": 1})
        def lookup(k: int) -> int:
            return k

    @tracker.track(provider="internal", kind="tool", tool_name="lookup")  # without: as before
    def lookup_plain(k: int) -> int:
        return k

    assert lookup_plain(2) == 2
