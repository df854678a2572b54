"""``args_hash``: a digest of a tool call's arguments, made in process; the arguments never leave it.

The arguments are written as canonical JSON (keys sorted at every level, no whitespace, UTF-8; a
tuple is a list, a date or UUID its ISO text, a dataclass its fields) and digested with BLAKE2b into
8 bytes, 16 hex digits: the same arguments in any key order give the same hash, and any other
arguments another (two of 2**64 colliding within one session is not a concern). With the tracker's
user id key (``SPENDSTREAM_USER_ID_KEY``) the digest is keyed by a key derived from it, so whoever
reads ``llm_calls`` cannot confirm a guess of low-entropy arguments (an order number, an e-mail
address) by hashing it; the application's processes share that key, so their hashes agree.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

DIGEST_BYTES = 8
_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_KEY_PURPOSE = b"spendstream args_hash"


def args_key(user_id_key: bytes | None) -> bytes:
    """The key of :func:`args_hash` derived from the user id key (not that key itself); ``b""``: none."""
    if user_id_key is None:
        return b""
    return hmac.new(user_id_key, _KEY_PURPOSE, hashlib.sha256).digest()


def canonical_json(args: Any) -> bytes:
    """``args`` as canonical JSON (sorted keys, no whitespace, UTF-8).

    Raises:
        TypeError: ``args`` holds what JSON cannot say (a set, bytes, an object of your own, an
            integer over 64 bits); the message names its type, never its value.
    """
    return orjson.dumps(args, option=_CANONICAL)


def args_hash(args: Any, key: bytes = b"") -> str:
    """The ``args_hash`` of a tool call's arguments: 16 hex digits of BLAKE2b over their canonical JSON.

    Args:
        args: the arguments, as the tool is given them (a dict of them, a list, a single value).
        key: from :func:`args_key`; empty for an unkeyed digest.

    Raises:
        TypeError: as :func:`canonical_json`.
    """
    return hashlib.blake2b(canonical_json(args), digest_size=DIGEST_BYTES, key=key).hexdigest()
