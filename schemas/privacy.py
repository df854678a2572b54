"""Detection of personal data and secrets in free-form tag values.

Tags are categorical labels (``tier=enterprise``), never a place for an e-mail address, a phone
number, a card number or a credential. Values that look like one are refused at validation time so
that they never reach Kafka retention or ClickHouse.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")
_CARD_CANDIDATE = re.compile(r"(?:\d[ -]?){13,19}")
_SECRET_PREFIXES = re.compile(
    r"(?:sk-[A-Za-z0-9_-]{16,}|sk-ant-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{30,}|"
    r"xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{30,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,})"
)
_HIGH_ENTROPY = re.compile(r"^[A-Za-z0-9+/_=-]{32,}$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _looks_like_card(value: str) -> bool:
    for match in _CARD_CANDIDATE.finditer(value):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return True
    return False


def _looks_like_token(value: str) -> bool:
    """A long run of mixed letters and digits: an API key, a session token, a hash of a secret."""
    if not _HIGH_ENTROPY.match(value):
        return False
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value)))
    return classes >= 3


def sensitive_kind(value: str) -> str | None:
    """Name the kind of personal data or secret ``value`` looks like, or ``None`` if it looks clean."""
    if _EMAIL.search(value):
        return "an e-mail address"
    if _SECRET_PREFIXES.search(value) or _looks_like_token(value):
        return "a secret or access token"
    if _looks_like_card(value):
        return "a payment card number"
    if _PHONE.match(value) and sum(c.isdigit() for c in value) >= 7:
        return "a phone number"
    return None
