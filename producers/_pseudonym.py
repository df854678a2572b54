"""Pseudonymous user ids: an HMAC of the raw id, so spend per user is visible and the user is not."""

from __future__ import annotations

import os

from producers._exceptions import SDKError
from schemas.privacy import MIN_KEY_BYTES, pseudonym

KEY_ENV = "SPENDSTREAM_USER_ID_KEY"


def user_id_key(key: str | bytes | None = None) -> bytes | None:
    """The HMAC key: the one given, else ``SPENDSTREAM_USER_ID_KEY``, else None (no user ids sent)."""
    raw = key if key is not None else os.environ.get(KEY_ENV)
    if raw is None or raw == "":
        return None
    value = raw.encode() if isinstance(raw, str) else raw
    if len(value) < MIN_KEY_BYTES:
        raise SDKError(
            f"the user id key is {len(value)} bytes long; use at least {MIN_KEY_BYTES} random bytes "
            f"(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`) in {KEY_ENV}"
        )
    return value


def pseudonymize(user_id: str, key: bytes) -> str:
    """``u_`` and 32 hex digits of HMAC-SHA256(key, user_id): stable per key, not reversible, the same
    as the worker's (``schemas.privacy.pseudonym``); an id already in that form is kept."""
    return pseudonym(user_id, key)
