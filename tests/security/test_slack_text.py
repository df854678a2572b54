"""Event fields reach Slack as text, never as Slack markup: no mentions, no links under a sender's label."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from alerting.mrkdwn import code, escape, safe_blocks
from alerting.scheduled import ScheduledChecks
from alerting.slack import Posters, SlackPoster, blocks_for, group_blocks, text_of
from producers import Emitter
from schemas.alert import Alert, alert_id_for
from schemas.config import SpendstreamConfig
from sinks.clickhouse import connect
from sinks.migrations import migrate
from tests.conftest import UpProcess
from tests.slack_standin import Posted, SlackStandIn

HOSTILE_MODEL = "<!channel> <https://evil.example/login|Re-authenticate Slack> & <@U123>"
_MARKUP = re.compile(r"<[!@#]|<(?:https?|mailto):")


def all_text(posted: Posted) -> str:
    """Every text Slack would render of a posted message: the notification and each mrkdwn text."""
    texts = [posted.text]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                texts.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(posted.blocks or [])
    return "\n".join(texts)


def test_escape_neutralises_slack_control_characters_and_links() -> None:
    assert escape("a < b && c > d") == "a &lt; b &amp;&amp; c &gt; d"
    assert escape("<!here>") == "&lt;!here&gt;"
    assert escape("see https://evil.example/x now") == "see `https://evil.example/x` now"
    assert escape("www.evil.example") == "`www.evil.example`"
    assert code("a`b") == "`a\u02cbb`"
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "<!channel>"}}, {"type": "divider"}]
    assert safe_blocks(blocks) == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "&lt;!channel&gt;"}},
        {"type": "divider"},
    ]
    assert blocks[0]["text"]["text"] == "<!channel>"  # the caller's blocks are left as they were


def test_an_alert_about_a_hostile_key_renders_without_markup() -> None:
    dedup = f"unpriced_model:model:{HOSTILE_MODEL}"
    alert = Alert(
        alert_id=alert_id_for(dedup), ts=datetime.now(UTC), kind="unpriced_model", severity="warning",
        dimension="model", key=HOSTILE_MODEL, value=1, window="1d", message=f"no price for {HOSTILE_MODEL}",
        query=f"SELECT * FROM llm_calls WHERE model = '{HOSTILE_MODEL}' AND ts > now() - 1", dedup_key=dedup,
    )  # fmt: skip
    rendered = Posted("#c", escape(text_of([alert])), safe_blocks(blocks_for(alert)), "1", None)
    assert _MARKUP.search(all_text(rendered)) is None


@pytest.mark.integration
def test_a_model_named_like_a_phishing_link_reaches_slack_as_text(
    start_up: Callable[..., UpProcess], broker: str, slack: SlackStandIn, tmp_path: Path
) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text("alerts:\n  group_wait_seconds: 0\n  routes:\n    - channel: '#llm-costs'\n")
    up = start_up(
        SPENDSTREAM_CONFIG=str(config), SPENDSTREAM_SLACK_BOT_TOKEN="xoxb-test", SPENDSTREAM_SLACK_API_URL=slack.url
    )
    emitter = Emitter(broker, topic=up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.calls")
    for n in range(3):
        emitter.emit_raw(
            json.dumps({"event_id": f"h-{n}", "ts": datetime.now(UTC).isoformat(), "provider": "selfhost",
                        "model": HOSTILE_MODEL, "feature": "support.triage", "input_tokens": 900}).encode()
        )  # fmt: skip
    assert emitter.close().delivered == 3
    assert up.wait_for("SELECT any(delivery_state) FROM alerts FINAL", "delivered") == "delivered"
    assert slack.posted, "nothing was posted"
    for posted in slack.posted:
        text = all_text(posted)
        assert _MARKUP.search(text) is None, text
        assert "&lt;!channel&gt;" in text and "https://evil.example/login|Re-authenticate" in text
        assert linkable(posted.text) == [] and all(linkable(t) == [] for t in _texts(posted.blocks)), text


# --- Web addresses in values: text, never links. Slack turns a web address or a bare domain into a link
# anywhere but inside code; so every value must stay inside one code span, or be set in one.

URL_KEY = "gpt https://evil.example/login now"
DOMAIN_KEY = "evil-login.com/reauth"
_LINKABLE = re.compile(r"(?i)[a-z][a-z0-9+.-]*:/|www\.|mailto:|(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])")


def linkable(mrkdwn: str) -> list[str]:
    """What Slack could turn into a link in a mrkdwn text: web addresses and domains outside code.

    A text that is one code block (```) is code; otherwise, on each line, backticks must pair up (a stray
    one lets a value's span end early), and the text between pairs is code.
    """
    if len(mrkdwn) >= 6 and mrkdwn.startswith("```") and mrkdwn.endswith("```"):
        return []
    found = []
    for line in mrkdwn.split("\n"):
        assert line.count("`") % 2 == 0, f"a stray backtick: {line!r}"
        found += [m.group() for text in line.split("`")[::2] for m in _LINKABLE.finditer(text)]
    return found


def hostile_alert(key: str, kind: str = "unpriced_model", message: str | None = None) -> Alert:
    dedup = f"{kind}:model:{key}"
    return Alert(
        alert_id=alert_id_for(dedup), ts=datetime.now(UTC), kind=kind, severity="warning",
        dimension="model", key=key, value=1, window="1d", message=message or f"no price for {key}. Add one.",
        query=f"SELECT * FROM llm_calls WHERE model = '{key}' AND note = 'a < b & c > d' AND ts > now() - 1",
        dedup_key=dedup,
    )  # fmt: skip


def unescaped(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@pytest.mark.parametrize(
    "key",
    [
        URL_KEY,
        DOMAIN_KEY,
        "see www.evil.example",
        "a`b https://evil.example/x`c",
        "x```y",
        "x```https://evil.example```y",
    ],
)
def test_a_web_address_in_a_key_stays_in_code_in_an_alert_a_group_and_the_notification(key: str) -> None:
    alerts = [hostile_alert(key), hostile_alert(key + " 2"), hostile_alert("gpt-4o")]
    for posted in (
        Posted("#c", escape(text_of(alerts[:1])), safe_blocks(blocks_for(alerts[0])), "1", None),
        Posted("#c", escape(text_of(alerts)), safe_blocks(group_blocks(alerts)), "1", None),
    ):
        assert linkable(posted.text) == []
        for text in _texts(posted.blocks):
            assert linkable(text) == [], text


def test_a_key_reads_whole_in_one_code_span_and_the_query_block_is_the_exact_query() -> None:
    alert = hostile_alert(URL_KEY)
    texts = _texts(safe_blocks(blocks_for(alert)))
    assert texts[0].endswith(f"model `{URL_KEY}`")
    assert texts[-1].startswith("```") and texts[-1].endswith("```")
    assert unescaped(texts[-1][3:-3]) == alert.query
    [line] = _texts(safe_blocks(group_blocks([alert, hostile_alert("gpt-4o")])))[1].split("\n")[:1]
    assert f"model `{URL_KEY}`:" in line


def _texts(blocks: list[dict[str, Any]] | None) -> list[str]:
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") == "mrkdwn" and isinstance(value.get("text"), str):
                texts.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(blocks or [])
    return texts


def test_the_product_own_code_spans_are_kept_and_plain_text_addresses_set_in_code() -> None:
    assert escape("see https://evil.example/x now") == "see `https://evil.example/x` now"
    # the full stop that ends the sentence stays outside the span
    assert escape("go to evil-login.com/reauth.") == "go to `evil-login.com/reauth`."
    assert escape("(`spendstream alerts`) and `a < b`") == "(`spendstream alerts`) and `a &lt; b`"
    assert escape("a `b") == "a \u02cbb"  # a stray backtick cannot open a span a value would close
    kept = "spent $1,234.56 (+12.5%), 12.34ms, sales.email_draft, v1.2.3, claude-3.5-sonnet"
    assert escape(kept) == kept
    assert code("a`b\nc") == "`a\u02cbb c`"


def test_values_posted_to_the_slack_stand_in_are_never_linkable(slack: SlackStandIn) -> None:
    poster = SlackPoster("xoxb-test", slack.url)
    alert = hostile_alert(URL_KEY, message=f"model {URL_KEY} and {DOMAIN_KEY} cost more")
    poster.post("#llm-costs", [alert])
    poster.post("#llm-costs", [alert, hostile_alert(DOMAIN_KEY), hostile_alert("<!channel> `x` www.evil.example")])
    forecast = hostile_alert(DOMAIN_KEY, kind="budget_forecast", message=f"model {DOMAIN_KEY} is projected to spend")
    poster.post("#llm-costs", [forecast])
    assert len(slack.posted) == 3
    for posted in slack.posted:
        assert linkable(posted.text) == [] and _MARKUP.search(posted.text) is None
        for text in _texts(posted.blocks):
            assert linkable(text) == [] and _MARKUP.search(text) is None, text
    queries = [unescaped(t[3:-3]) for p in slack.posted for t in _texts(p.blocks) if t.startswith("```")]
    assert queries == [alert.query, alert.query, forecast.query]


@pytest.mark.integration
def test_a_digest_posts_keys_with_web_addresses_in_code(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> None:
    migrate(connect(chdb_dsn), database)
    day = date(2026, 11, 20)
    rows = [("all", "all", 9.0), ("feature", URL_KEY, 5.0), ("feature", DOMAIN_KEY, 3.0), ("model", "a`b www.x.io", 1)]
    values = ", ".join(f"('{day} 00:00:00', 'real', '{dim}', '{key}', 10, {usd})" for dim, key, usd in rows)
    columns = "bucket, data_mode, dimension, key, calls, cost_usd"
    ch.command(f"INSERT INTO {database}.rollup_day ({columns}) VALUES {values}")
    config = SpendstreamConfig.model_validate({"alerts": {"digests": [{"channel": "#llm-costs", "hour_utc": 8}]}})
    poster = SlackPoster("xoxb-test", slack.url)
    checks = ScheduledChecks(lambda: connect(chdb_dsn), database, config, Posters(poster), lambda alerts: None)
    text, blocks = checks.digest_message(ch, config.alerts.digests[0], day)
    poster.post_blocks("#llm-costs", text, blocks)
    [posted] = slack.posted
    texts = _texts(posted.blocks)
    assert any(f"• `{URL_KEY}` $5.00" in t for t in texts) and any(f"• `{DOMAIN_KEY}` $3.00" in t for t in texts)
    for text in [posted.text, *texts]:
        assert linkable(text) == [], text
