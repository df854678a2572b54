"""Slack-safe text: what an event put in a message reads as text, never as Slack markup.

Slack parses ``&``, ``<`` and ``>`` as control characters in ``mrkdwn`` text: ``<!channel>`` pings a
channel, ``<https://evil.example|Re-authenticate>`` shows a link under a label of the sender's
choosing. Every value in an alert comes from events (a model, a feature, a key), so every ``mrkdwn``
text and the notification text are escaped as Slack's formatting reference says, and a bare web
address is set in code, where Slack does not turn it into a link. spendstream's own messages hold
no links, so after this a message has none.
"""

from __future__ import annotations

import re
from typing import Any

_CONTROL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ADDRESS = re.compile(r"(?i)\b(?:https?|ftp|mailto|slack)://[^\s`]+|\bwww\.[^\s`]+")


def escape(text: str) -> str:
    """``text`` with Slack's control characters escaped and web addresses set in code."""
    escaped = text.translate(_CONTROL)
    return _ADDRESS.sub(lambda m: f"`{m.group()}`", escaped)


def code(value: str) -> str:
    """``value`` as inline code; a backtick in it cannot end the code early."""
    return "`" + value.replace("`", "'") + "`"


def safe_blocks(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of Block Kit ``blocks`` with every ``mrkdwn`` text escaped."""
    return [_safe(block) for block in blocks]


def _safe(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("type") == "mrkdwn" and isinstance(value.get("text"), str):
            return {**value, "text": escape(value["text"])}
        return {key: _safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_safe(item) for item in value]
    return value
