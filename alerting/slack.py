"""Posting alerts to Slack with slack-sdk: a bot token and ``chat.postMessage``, in Block Kit."""

from __future__ import annotations

from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from schemas.alert import Alert

SEVERITY_MARK = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


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
                "text": f"{SEVERITY_MARK[alert.severity]} *{alert.kind}* {alert.dimension} `{alert.key}`",
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": alert.message[:2900]}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"{figures} over {alert.window} · {alert.data_mode}"}],
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{alert.query[:2800]}```"}},
    ]


class SlackPoster:
    """Posts with a bot token; ``base_url`` points elsewhere than slack.com (Enterprise Grid, tests)."""

    def __init__(self, token: str, base_url: str = "https://slack.com/api/", timeout: int = 10) -> None:
        self._client = WebClient(
            token=token, base_url=base_url if base_url.endswith("/") else base_url + "/", timeout=timeout
        )

    def post(self, channel: str, alert: Alert) -> None:
        text = f"[{alert.severity}] {alert.kind} {alert.dimension}={alert.key}: {alert.message}"
        self.post_blocks(channel, text[:3000], blocks_for(alert))

    def post_blocks(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        try:
            self._client.chat_postMessage(channel=channel, text=text, blocks=blocks)
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
