"""Posting alerts to Slack with slack-sdk: a bot token and ``chat.postMessage``, in Block Kit."""

from __future__ import annotations

from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from schemas.alert import Alert

SEVERITY_MARK = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
RESOLVED_MARK = ":white_check_mark:"
GROUP_LINES = 15


def mark(alert: Alert) -> str:
    return RESOLVED_MARK if alert.status == "resolved" else SEVERITY_MARK[alert.severity]


class SlackDeliveryError(Exception):
    """A message Slack did not take. ``transient``: try again later (``retry_after`` seconds at least)."""

    def __init__(self, reason: str, *, transient: bool, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after


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
                f"{alert.dimension} `{alert.key}`",
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
    lines = [f"{mark(a)} {a.dimension} `{a.key}`: {a.message.split('. ')[0][:200]}" for a in alerts[:GROUP_LINES]]
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


class SlackPoster:
    """Posts with a bot token; ``base_url`` points elsewhere than slack.com (Enterprise Grid, tests)."""

    def __init__(self, token: str, base_url: str = "https://slack.com/api/", timeout: int = 10) -> None:
        self._client = WebClient(
            token=token, base_url=base_url if base_url.endswith("/") else base_url + "/", timeout=timeout
        )

    def post(self, channel: str, alerts: list[Alert], thread_ts: str | None = None) -> str:
        """Post ``alerts`` (of one kind) as one message, or as a reply in ``thread_ts``; returns its ts."""
        blocks = blocks_for(alerts[0]) if len(alerts) == 1 else group_blocks(alerts)
        return self.post_blocks(channel, text_of(alerts), blocks, thread_ts)

    def post_blocks(
        self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None, thread_ts: str | None = None
    ) -> str:
        try:
            answer = self._client.chat_postMessage(channel=channel, text=text, blocks=blocks, thread_ts=thread_ts)
            return str(answer.get("ts") or "")
        except SlackApiError as exc:
            status = exc.response.status_code
            error = exc.response.get("error", "") if isinstance(exc.response.data, dict) else ""
            if status == 429:
                retry_after = float(exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 1)))
                raise SlackDeliveryError("rate limited by Slack", transient=True, retry_after=retry_after) from exc
            if status >= 500:
                raise SlackDeliveryError(f"Slack answered {status}", transient=True) from exc
            hint = {
                "channel_not_found": "invite the bot to the channel, or fix the route's channel",
                "not_in_channel": "invite the bot to the channel",
                "invalid_auth": "check SPENDSTREAM_SLACK_BOT_TOKEN",
                "not_authed": "set SPENDSTREAM_SLACK_BOT_TOKEN",
            }.get(error, "see https://api.slack.com/methods/chat.postMessage#errors")
            raise SlackDeliveryError(
                f"Slack refused the message to {channel} ({error or status}): {hint}", transient=False
            ) from exc
        except OSError as exc:  # connection refused, timeout, DNS
            raise SlackDeliveryError(f"cannot reach Slack ({exc})", transient=True) from exc
