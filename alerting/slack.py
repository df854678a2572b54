"""Posting alerts to Slack with slack-sdk, in Block Kit: a bot token (``chat.postMessage``) or an incoming webhook.

slack-sdk's own retries are off: a request it sends again after a lost answer posts the message
twice. The alerter retries, and with a bot token it first looks in the channel for the message.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse
from slack_sdk.webhook import WebhookClient

from alerting.mrkdwn import code, escape, safe_blocks
from schemas.alert import Alert
from schemas.config import AlertsConfig
from schemas.exceptions import ConfigError

EVENT_TYPE = "spendstream_alert"
"""The ``event_type`` of the metadata an alert message carries (its ``event_payload`` holds the ``attempt_id``)."""
HISTORY_PAGES = 10
"""How many pages of 200 messages are read looking for a message whose answer was lost."""

SEVERITY_MARK = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
RESOLVED_MARK = ":white_check_mark:"
GROUP_LINES = 15


def mark(alert: Alert) -> str:
    return RESOLVED_MARK if alert.status == "resolved" else SEVERITY_MARK[alert.severity]


CLOCK_SKEW = 60.0
"""Seconds before an attempt began from which a channel is read for its message (clocks differ)."""


class SlackDeliveryError(Exception):
    """A message Slack did not take. ``transient``: try again later (``retry_after`` seconds at least).

    ``maybe_posted``: no answer came after the request was sent (a timeout, a dropped connection), so
    Slack may have posted the message all the same.
    """

    def __init__(self, reason: str, *, transient: bool, retry_after: float = 0.0, maybe_posted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after
        self.maybe_posted = maybe_posted


def _unanswered(exc: OSError, what: str) -> SlackDeliveryError:
    """A request that got no answer: it may have reached Slack unless the connection was never made."""
    cause = exc.reason if isinstance(exc, URLError) else exc
    sent = not isinstance(cause, ConnectionRefusedError | socket.gaierror)
    return SlackDeliveryError(
        f"{'no answer from' if sent else 'cannot reach'} {what} ({exc})", transient=True, maybe_posted=sent
    )


def blocks_for(alert: Alert) -> list[dict[str, Any]]:
    """What, where, how much against normal, and the query to dig in: short enough for a phone."""
    figures = f"*{alert.value:,.4g}*"
    if alert.baseline is not None:
        figures += f" vs normal {alert.baseline:,.4g}"
    if alert.threshold is not None:
        figures += f" (threshold {alert.threshold:,.4g})"
    return [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"{mark(alert)} *{alert.kind}*{' resolved' if alert.status == 'resolved' else ''} "
                f"{alert.dimension} {code(alert.key)}",
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": alert.message[:2900]}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"{figures} over {alert.window} · {alert.data_mode}"}],
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{alert.query[:2800]}```"}},
    ]


def group_blocks(alerts: list[Alert]) -> list[dict[str, Any]]:
    """One message for several alerts of one kind raised together: a line each, then the first's detail."""
    first = alerts[0]
    lines = [f"{mark(a)} {a.dimension} {code(a.key)}: {a.message.split('. ')[0][:200]}" for a in alerts[:GROUP_LINES]]
    if len(alerts) > GROUP_LINES:
        lines.append(f"... and {len(alerts) - GROUP_LINES} more (`spendstream alerts`)")
    return [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*{len(alerts)} {first.kind} alerts* ({first.data_mode})"},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{first.query[:2800]}```"}},
    ]


def text_of(alerts: list[Alert]) -> str:
    """The notification text (what a phone shows before the message is opened)."""
    first = alerts[0]
    state = "resolved" if first.status == "resolved" else first.severity
    if len(alerts) == 1:
        return f"[{state}] {first.kind} {first.dimension}={first.key}: {first.message}"[:3000]
    keys = ", ".join(f"{a.dimension}={a.key}" for a in alerts[:5])
    return f"[{first.severity}] {len(alerts)} {first.kind} alerts: {keys}"[:3000]


class Poster:
    """Something that posts to a Slack channel."""

    can_check = False
    """Whether :meth:`find` can look in the channel for a message whose answer was lost."""

    def post(
        self, channel: str, alerts: list[Alert], thread_ts: str | None = None, attempt_id: str | None = None
    ) -> str:
        """Post ``alerts`` (of one kind) as one message, or as a reply in ``thread_ts``; returns its ts.

        ``attempt_id`` goes in the message's metadata, for :meth:`find`.
        """
        blocks = blocks_for(alerts[0]) if len(alerts) == 1 else group_blocks(alerts)
        return self.post_blocks(channel, text_of(alerts), blocks, thread_ts, attempt_id)

    def post_blocks(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
        attempt_id: str | None = None,
    ) -> str:
        """Post ``text`` (the notification) and ``blocks``, made Slack-safe (``alerting.mrkdwn``); returns its ts."""
        return self._send(channel, escape(text), safe_blocks(blocks) if blocks else None, thread_ts, attempt_id)

    def find(self, channel: str, attempt_id: str, thread_ts: str | None, since: float) -> str | None:
        """The ts of the message posted with ``attempt_id`` since ``since`` (epoch seconds), or None."""
        return None

    def _send(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None,
        thread_ts: str | None,
        attempt_id: str | None,
    ) -> str:
        raise NotImplementedError


class SlackPoster(Poster):
    """Posts with a bot token; ``base_url`` points elsewhere than slack.com (Enterprise Grid, tests).

    To check a message whose answer was lost, the bot reads the channel: it needs the
    ``channels:read`` and ``channels:history`` scopes (``groups:`` for private channels).
    """

    can_check = True

    def __init__(self, token: str, base_url: str = "https://slack.com/api/", timeout: int = 10) -> None:
        self._client = WebClient(
            token=token,
            base_url=base_url if base_url.endswith("/") else base_url + "/",
            timeout=timeout,
            retry_handlers=[],
        )
        self._channel_ids: dict[str, str] = {}

    def _send(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None,
        thread_ts: str | None,
        attempt_id: str | None,
    ) -> str:
        metadata = {"event_type": EVENT_TYPE, "event_payload": {"attempt_id": attempt_id}} if attempt_id else None
        try:
            answer = self._client.chat_postMessage(
                channel=channel,
                text=text,
                blocks=blocks,
                thread_ts=thread_ts,
                unfurl_links=False,
                unfurl_media=False,
                metadata=metadata,
            )
        except SlackApiError as exc:
            raise _refused(exc, channel, "chat.postMessage", {
                "channel_not_found": "invite the bot to the channel, or fix the route's channel",
                "not_in_channel": "invite the bot to the channel",
            }) from exc  # fmt: skip
        except OSError as exc:  # connection refused, timeout, DNS
            raise _unanswered(exc, "Slack") from exc
        if answer.get("channel"):
            self._channel_ids[channel] = str(answer["channel"])
        return str(answer.get("ts") or "")

    def find(self, channel: str, attempt_id: str, thread_ts: str | None, since: float) -> str | None:
        """The ts of the message posted with ``attempt_id``: in ``conversations.history`` (or the thread's
        ``conversations.replies``) from ``since`` on, by its metadata; None when it is not there.

        Raises:
            SlackDeliveryError: Slack did not answer (transient), or the bot may not read the channel.
        """
        hints = {
            "missing_scope": "give the bot channels:history and channels:read (groups: for private channels)",
            "not_in_channel": "invite the bot to the channel",
        }
        try:
            channel_id = self._channel_id(channel)
            cursor = None
            for _ in range(HISTORY_PAGES):
                args: dict[str, Any] = {
                    "channel": channel_id, "oldest": f"{since:.6f}", "include_all_metadata": True, "limit": 200,
                    "cursor": cursor,
                }  # fmt: skip
                answer: SlackResponse = (
                    self._client.conversations_replies(ts=thread_ts, **args)
                    if thread_ts
                    else self._client.conversations_history(**args)
                )
                for message in answer.get("messages") or []:
                    metadata = message.get("metadata") or {}
                    payload = metadata.get("event_payload") or {}
                    if metadata.get("event_type") == EVENT_TYPE and payload.get("attempt_id") == attempt_id:
                        return str(message["ts"])
                cursor = (answer.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return None
        except SlackApiError as exc:
            raise _refused(exc, channel, "conversations.history", hints) from exc
        except OSError as exc:
            raise _unanswered(exc, "Slack") from exc
        return None

    def _channel_id(self, channel: str) -> str:
        """Slack reads channels by ID: a ``#name`` is looked up (once) with ``conversations.list``."""
        if not channel.startswith("#"):
            return channel
        cursor = None
        while channel not in self._channel_ids:
            answer = self._client.conversations_list(
                types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
            )
            for found in answer.get("channels") or []:
                self._channel_ids["#" + found["name"]] = found["id"]
            cursor = (answer.get("response_metadata") or {}).get("next_cursor")
            if not cursor and channel not in self._channel_ids:
                raise SlackDeliveryError(
                    f"the bot cannot see {channel} in conversations.list: invite it, or name the channel by its ID",
                    transient=False,
                )
        return self._channel_ids[channel]


def _refused(exc: SlackApiError, channel: str, method: str, hints: Mapping[str, str]) -> SlackDeliveryError:
    """What Slack's error answer means: rate limits and outages are transient, the rest needs a person."""
    status = exc.response.status_code
    error = exc.response.get("error", "") if isinstance(exc.response.data, dict) else ""
    if status == 429:
        retry_after = float(exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 1)))
        return SlackDeliveryError("rate limited by Slack", transient=True, retry_after=retry_after)
    if status >= 500:
        return SlackDeliveryError(f"Slack answered {status}", transient=True)
    hint = {
        "invalid_auth": "check SPENDSTREAM_SLACK_BOT_TOKEN",
        "not_authed": "set SPENDSTREAM_SLACK_BOT_TOKEN",
        **hints,
    }.get(error, f"see https://api.slack.com/methods/{method}#errors")
    what = "the message to" if method == "chat.postMessage" else f"{method} of"
    return SlackDeliveryError(f"Slack refused {what} {channel} ({error or status}): {hint}", transient=False)


WEBHOOK_THREAD = "webhook"
"""What a webhook post returns as its ts: incoming webhooks cannot reply in a thread, so an incident's
later alerts are posted as new messages marked as updates, still at most one per group interval."""

_WEBHOOK_HINTS = {
    "invalid_token": "the webhook was revoked: create a new one and update the route's webhook_env variable",
    "no_service": "the webhook was removed: create a new one and update the route's webhook_env variable",
    "no_team": "the workspace of the webhook is gone: create a new webhook",
    "channel_not_found": "the webhook's channel was deleted: create a webhook for another channel",
    "channel_is_archived": "the webhook's channel is archived: unarchive it or create a new webhook",
    "action_prohibited": "a workspace admin blocked the webhook",
    "invalid_payload": "Slack did not accept the message's format",
}


class WebhookPoster(Poster):
    """Posts through an incoming webhook (one channel, fixed when the webhook was created)."""

    def __init__(self, url: str, timeout: int = 10) -> None:
        self._client = WebhookClient(url, timeout=timeout, retry_handlers=[])

    def _send(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None,
        thread_ts: str | None,
        attempt_id: str | None,
    ) -> str:
        if thread_ts is not None:
            text = f"Update: {text}"
            blocks = [{"type": "context", "elements": [{"type": "mrkdwn", "text": "*Update*"}]}, *(blocks or [])]
        try:
            answer = self._client.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False)
        except OSError as exc:  # connection refused, timeout, DNS
            raise _unanswered(exc, f"Slack's webhook for {channel}") from exc
        if answer.status_code == 200:
            return WEBHOOK_THREAD
        if answer.status_code == 429:
            retry_after = float(answer.headers.get("Retry-After", answer.headers.get("retry-after", 1)))
            raise SlackDeliveryError("rate limited by Slack", transient=True, retry_after=retry_after)
        if answer.status_code >= 500:
            raise SlackDeliveryError(f"Slack's webhook answered {answer.status_code}", transient=True)
        error = (answer.body or "").strip()[:80]
        hint = _WEBHOOK_HINTS.get(error, "see https://api.slack.com/messaging/webhooks#handling_errors")
        raise SlackDeliveryError(
            f"Slack's webhook for {channel} refused the message ({error or answer.status_code}): {hint}",
            transient=False,
        )


class Posters:
    """The poster of each channel: the route's incoming webhook when it names one, else the bot token."""

    def __init__(self, bot: Poster | None, webhooks: Mapping[str, Poster] | None = None) -> None:
        self._bot = bot
        self._webhooks = dict(webhooks or {})

    def for_channel(self, channel: str) -> Poster:
        """Raises:
        SlackDeliveryError: not transient, when neither a webhook nor a bot token can post to ``channel``.
        """
        poster = self._webhooks.get(channel, self._bot)
        if poster is None:
            raise SlackDeliveryError(
                f"no way to post to {channel}: set SPENDSTREAM_SLACK_BOT_TOKEN, or give its route a webhook_env",
                transient=False,
            )
        return poster

    def describe(self) -> str:
        ways = (["the bot token"] if self._bot is not None else []) + [
            f"a webhook to {channel}" for channel in self._webhooks
        ]
        if not ways:
            return "no SPENDSTREAM_SLACK_BOT_TOKEN and no webhook: alerts are stored, not posted"
        return "posting alerts to Slack with " + ", ".join(ways)

    @classmethod
    def configured(
        cls,
        alerts: AlertsConfig,
        bot_token: str | None,
        api_url: str,
        config_path: Path | str | None,
        environ: Mapping[str, str] = os.environ,
    ) -> Posters:
        """The posters the config and environment describe.

        Raises:
            ConfigError: a route's ``webhook_env`` names a variable that is unset or not a URL.
        """
        webhooks: dict[str, Poster] = {}
        for n, route in enumerate(alerts.routes):
            if route.webhook_env is None:
                continue
            url = environ.get(route.webhook_env, "")
            if not url.startswith(("https://", "http://")):
                problem = "is not set" if not url else "is not a URL"
                raise ConfigError(
                    config_path or "SPENDSTREAM_CONFIG",
                    f"alerts.routes.{n}.webhook_env",
                    f"{route.webhook_env} {problem}: export it with the incoming-webhook URL of {route.channel}",
                )
            webhooks[route.channel] = WebhookPoster(url)
        return cls(SlackPoster(bot_token, api_url) if bot_token else None, webhooks)
