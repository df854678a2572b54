"""Slack-safe text: what an event put in a message reads as text, never as Slack markup or a link.

Slack parses ``&``, ``<`` and ``>`` as control characters in ``mrkdwn`` text: ``<!channel>`` pings a
channel, ``<https://evil.example|Re-authenticate>`` shows a link under a label of the sender's
choosing. It also turns a bare web address or domain (``evil-login.com/reauth``) into a link
anywhere but in code. Every value in an alert comes from events (a model, a feature, a key), so:

- a value the product sets apart is one inline code span (:func:`code`): a backtick in it becomes
  a lookalike (U+02CB), so the span cannot end early and leave the rest of the value as text;
- every ``mrkdwn`` text and the notification text are escaped (:func:`escape`): ``&``, ``<`` and
  ``>`` everywhere, as Slack's formatting reference says, and nothing else inside code (a code block's
  query copies as the exact query); in the text around code, a stray backtick becomes the lookalike
  and a word holding a web address or a domain is set in code, where Slack links nothing.

spendstream's own messages hold no links, so after this a message has none.
"""

from __future__ import annotations

import re
from typing import Any

BACKTICK = "\u02cb"
"""What a backtick in a value becomes (MODIFIER LETTER GRAVE ACCENT): it reads as one, and ends no code."""
_CONTROL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_VALUE = str.maketrans({"`": BACKTICK, "\n": " ", "\r": " "})
FENCE = "```"
"""A code block's fence: the product sets a whole text in one (a query); fences elsewhere are a value's."""
_SPAN = re.compile(r"(?<![^\s(\[{\"'])`[^`\n]+`(?![^\s)\]}\"'.,:;!?])")
"""An inline code span as :func:`code` and the product's texts set one: between spaces or punctuation."""
_WORD = re.compile(r"\S+")
_TRAILING = ".,:;!?)]}\"'"
_LINKABLE = re.compile(
    r"(?i)[a-z][a-z0-9+.-]*:/|www\.|mailto:|tel:|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|"
    r"(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])"
)
"""What Slack may turn into a link: a scheme, ``www.``, an IP address, a domain (labels, then a top-level
domain of letters). A domain counts only with a letter before its top-level domain (see :func:`_linkable`):
``12.34ms`` and ``$1.5k`` are figures."""


def code(value: str) -> str:
    """``value`` as one inline code span: a backtick in it cannot end the span early, nor a line break split it."""
    return "`" + value.translate(_VALUE) + "`"


def escape(text: str) -> str:
    """``text`` made Slack-safe: control characters escaped, and no web address or domain left outside code."""
    if not (len(text) >= 2 * len(FENCE) and text.startswith(FENCE) and text.endswith(FENCE)):
        return _escape_inline(text)
    # what Slack needs escaped, and nothing more: the block's text is the query once &amp; &lt; &gt; are read
    # (a fence inside, from a value, would end the block: its last backtick becomes the lookalike)
    inside = text[len(FENCE) : -len(FENCE)].translate(_CONTROL).replace(FENCE, "``" + BACKTICK)
    return FENCE + inside + FENCE


def _escape_inline(text: str) -> str:
    pieces, start = [], 0
    for span in _SPAN.finditer(text):
        pieces += [_escape_plain(text[start : span.start()]), span.group().translate(_CONTROL)]
        start = span.end()
    pieces.append(_escape_plain(text[start:]))
    return "".join(pieces)


def _escape_plain(text: str) -> str:
    escaped = text.translate(_CONTROL).replace("`", BACKTICK)
    return _WORD.sub(lambda word: _in_code_if_linkable(word.group()), escaped)


def _in_code_if_linkable(word: str) -> str:
    """``word`` set in code if Slack could link it; the punctuation that ends a sentence stays outside."""
    core = word.rstrip(_TRAILING)
    return f"`{core}`{word[len(core) :]}" if core and _linkable(core) else word


def _linkable(word: str) -> bool:
    for found in _LINKABLE.finditer(word):
        text = found.group()
        if "." not in text or (text[0].isdigit() and text.replace(".", "").isdigit()):
            return True  # a scheme, www., an IP address
        if any(char.isalpha() for char in text[: text.rindex(".")]):
            return True
    return False


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
