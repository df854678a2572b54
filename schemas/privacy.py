"""Personal data and secrets in an event's text: what is refused, what is redacted, and pseudonyms.

An event's ids and names become rollup keys, ClickHouse rows and Slack messages; none of them is a
place for an e-mail address, a phone number, a card number or a credential. Each kind of text has
its rule, tuned so that what real producers send passes (numeric and UUID ids, 32-hex trace ids,
snowflake ids, ISO dates and ``v1.2.3`` as prompt versions, IP-like strings, random ids):

- ids (:func:`id_kind`): an e-mail address, a known secret prefix (``sk-``, ``AKIA``, ``ghp_``, a
  JWT, ...), a payment card (13 to 19 digits, plain or grouped as cards are, starting 2 to 6, that
  pass the Luhn check), a phone number written as one (``+`` and 7 to 15 digits, or grouped like
  ``(415) 555-0123`` or ``415-555-0123``), never a bare run of digits.
- names and error types (:func:`name_kind`): the same, and a run of 32 or more token characters
  that reads like a key (3 character classes, few words: see :func:`_is_token`); the names of the
  price table's models (``NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO``) do not.
- tag values (:func:`sensitive_kind`): categorical labels, so stricter: any phone-like digit run,
  any 32-character mixed token.

The rules run per field and event, so each starts with a cheap hint (an ``@``, three digits in a
row, a secret's prefix) that rules most text out. Wider candidate patterns in RE2 syntax
(:data:`ID_CANDIDATES`, :data:`NAME_CANDIDATES`) let ``streams.ingest`` find a batch's candidate
rows with Arrow kernels; the model then decides. :func:`redact_raw` takes the four kinds out of a
rejected event's bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import orjson

# --- The four kinds, as spans in any text. Explicit ASCII classes, so that RE2 reads the candidate
# patterns below the same way (Python's \d and \s would also match other scripts' digits and spaces).
# Each rule runs only where a cheap hint says it may match, and starts with what Python's re can
# scan for quickly (a literal or a class, the look-behind after it): these run per field and event.

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")  # hint: "@"
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9._%+-]+")
_SECRET_PREFIXES = re.compile(
    # not after a letter or digit: "task-summarization-agent" holds "sk-" and is no key
    r"(?<![0-9A-Za-z])(?:sk-[A-Za-z0-9_-]{16,}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}|"
    r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|glpat-[A-Za-z0-9_-]{20,}|"
    r"xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{30,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|(?i:bearer)[\t\n\v\f\r ]+[A-Za-z0-9._~+/-]{16,}"
)
_SECRETS = (
    "sk-", "sk_", "rk_", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "AIza", "eyJ",
    "PRIVATE KEY", "B[Ee][Aa][Rr][Ee][Rr]", "b[Ee][Aa][Rr][Ee][Rr]",
)  # fmt: skip
_SECRET_HINT = re.compile("|".join(_SECRETS)).search
"""The hint of a secret: one of the prefixes (every branch starts with a literal: re scans for them fast)."""
_HINT = re.compile("|".join(["@", r"\+", *(f"{digit}[0-9][0-9]" for digit in "0123456789"), *_SECRETS])).search
"""The hint of any of the four kinds: an ``@``, a ``+``, three digits in a row, a secret's prefix."""
_PLAIN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*|"
    r"(?!00[1-9])[0-9]{1,12}|[0-9]{20,}|u_[0-9a-f]{32}"
).fullmatch
"""Ids that hold none of the four kinds, whatever their digits: a UUID, hex with a letter (a trace
id: no separator, so no card or phone, and no secret's prefix is hex), too few or too many digits
for a card, a pseudonym. Common, and full of digits the hint would stop at."""
_CARD = re.compile(
    # 13-19 digits, plain, in groups of four, or 4-6-5 / 4-6-4, starting 2 to 6; not inside a longer
    # word or the decimals of a number (Luhn is checked apart)
    r"[2-6](?<![0-9A-Za-z][2-6])(?<![0-9]\.[2-6])[0-9]{3}"
    r"(?:[0-9]{9,15}|(?:[ -][0-9]{4}){3}(?:[ -]?[0-9]{1,3})?|[ -][0-9]{6}[ -][0-9]{4,5})(?![0-9A-Za-z])"
)
_PHONE_GROUPED = re.compile(  # (415) 555-0123, 415-555-0123, 415.555.0123, 415 555 0123
    r"[(0-9](?<![0-9A-Za-z][(0-9])(?:(?<=\()[0-9]{3}\)[ .-]?|(?<=[0-9])[0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}"
    r"(?![0-9A-Za-z])"
)
_PHONE_E164 = re.compile(r"\+(?<![0-9A-Za-z+]\+)[0-9](?:[ .()-]{0,2}[0-9]){6,14}(?![0-9])")  # + and 7-15 digits
_PHONE_00 = re.compile(r"00(?<![0-9A-Za-z+]00)[ .()-]{0,2}[1-9](?:[ .()-]{0,2}[0-9]){9,14}(?![0-9A-Za-z])")
"""An international number dialled with 00: 00, then 10 to 15 digits (a country code first, never 0). A
numeric id rarely starts with exactly two zeros and a digit; one that does and is that long is refused."""
_DIGITS = re.compile(r"[0-9][0-9][0-9]").search
"""The hint of a card or a grouped phone number: three digits in a row."""
_TOKEN_RUN = re.compile(r"[A-Za-z0-9+/_=-]{32,}")
_MIXED_STRETCH = re.compile(r"[A-Za-z0-9]{10,}")
_WORD = re.compile(r"[A-Z]?[a-z]{3,}")

EMAIL = "an e-mail address"
SECRET = "a secret or access token"
CARD = "a payment card number"
PHONE = "a phone number"

# --- Candidates for RE2: a superset of the rules above, for Arrow's pyarrow.compute.match_substring_regex
# (``streams.ingest``), which searches a whole batch's text in C. No look-around, ASCII classes only.

_BOUNDARY = r"(?:^|[^0-9A-Za-z])"
_END = r"(?:$|[^0-9A-Za-z])"
ID_CANDIDATES = (
    r"@|\+[0-9]|PRIVATE KEY|(?i:bearer)[\t\n\v\f\r ]|"
    + _BOUNDARY
    + r"00[ .()-]{0,2}[1-9](?:[ .()-]{0,2}[0-9]){9}|"
    + _BOUNDARY
    + r"(?:(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}"
    + _END
    + r"|[2-6][0-9]{3}(?:[0-9]{9,15}|(?:[ -][0-9]{4}){3}(?:[ -]?[0-9]{1,3})?|[ -][0-9]{6}[ -][0-9]{4,5})"
    + _END
    + r"|sk-|(?:sk|rk)_|AKIA|gh[pousr]_|github_pat_|glpat-|xox[abposr]-|AIza|eyJ)"
)
"""Where :func:`id_kind` may find something: text without a match holds none of its kinds."""
NAME_CANDIDATES = ID_CANDIDATES + r"|[A-Za-z0-9+/_=-]{32}"
"""Where :func:`name_kind` may find something."""


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


def _card_ok(match: re.Match[str]) -> bool:
    return _luhn_ok(match.group().replace(" ", "").replace("-", ""))


def _has_card(value: str) -> bool:
    return any(_card_ok(match) for match in _CARD.finditer(value))


def _classes(value: str) -> int:
    """How many of lower case, upper case and digits ``value`` holds."""
    return any(c.islower() for c in value) + any(c.isupper() for c in value) + any(c.isdigit() for c in value)


def _is_token(run: str) -> bool:
    """A run of token characters that reads like a key, not like words.

    It holds a 10-character stretch mixing lower case, upper case and digits, and less than half of
    its letters and digits are in words (a capital or not, then 3 lower-case letters or more).
    Measured: none of the price table's 4,500 model and provider names
    (``NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO``) nor of 3,000 camelCase identifiers
    (``getUserById2HandlerForTheWebhooks``) is a token; 99% of 20,000 random keys of 32 to 64
    characters (base62, base64, base64url) are.
    """
    if not any(_classes(stretch) == 3 for stretch in _MIXED_STRETCH.findall(run)):
        return False
    in_words = sum(len(word) for word in _WORD.findall(run))
    return 2 * in_words < sum(ch.isalnum() for ch in run)


def id_kind(value: str) -> str | None:
    """The kind of personal data or secret an id holds (``"an e-mail address"``...), or ``None``."""
    if _PLAIN(value) or _HINT(value) is None:  # most ids and names: one or two fast searches
        return None
    if "@" in value and _EMAIL.search(value):
        return EMAIL
    if _SECRET_HINT(value) and _SECRET_PREFIXES.search(value):
        return SECRET
    if _DIGITS(value):
        if _has_card(value):
            return CARD
        if _PHONE_GROUPED.search(value) or ("00" in value and _PHONE_00.search(value)):
            return PHONE
    if "+" in value and _PHONE_E164.search(value):
        return PHONE
    return None


_HEX_DIGEST = re.compile(r"[0-9a-fA-F]+").fullmatch


def hash_kind(value: str) -> str | None:
    """Like :func:`id_kind`, for a ``prompt_hash``: a hex digest is a digest, even when its digits
    happen to pass for a card number (about 1 in 37,000 of 16-hex-digit hashes)."""
    return None if _HEX_DIGEST(value) else id_kind(value)


def name_kind(value: str) -> str | None:
    """The kind of personal data or secret a name or an error type holds, or ``None``."""
    kind = id_kind(value)
    if kind is None and len(value) >= 32 and any(_is_token(run) for run in _TOKEN_RUN.findall(value)):
        return SECRET
    return kind


# --- Tag values: categorical labels, screened as before (whole-value phone and token rules).

_TAG_PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")
_TAG_CARD_CANDIDATE = re.compile(r"(?:\d[ -]?){13,19}")
_TAG_TOKEN = re.compile(r"^[A-Za-z0-9+/_=-]{32,}$")


def _tag_has_card(value: str) -> bool:
    for match in _TAG_CARD_CANDIDATE.finditer(value):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return True
    return False


def _looks_like_token(value: str) -> bool:
    """A long run of mixed letters and digits: an API key, a session token, a hash of a secret."""
    if not _TAG_TOKEN.match(value):
        return False
    return _classes(value) >= 3


def sensitive_kind(value: str) -> str | None:
    """Name the kind of personal data or secret a tag value looks like, or ``None`` if it looks clean."""
    if _EMAIL.search(value):
        return EMAIL
    if _SECRET_PREFIXES.search(value) or _looks_like_token(value):
        return SECRET
    if _tag_has_card(value):
        return CARD
    if _TAG_PHONE.match(value) and sum(c.isdigit() for c in value) >= 7:
        return PHONE
    return None


# --- Reasons: the field, the kind, and what to send instead.

_ADVICE = {
    "user_id": "send a pseudonymous id (the SDK HMACs raw ids; or set SPENDSTREAM_USER_ID_KEY on the worker)",
    "tenant_id": "send the tenant's id, not a person's contact details or a credential",
    "error_type": "send the error's type or code, not its message or the request's data",
}
_ID_ADVICE = "send an opaque id, never personal data or a credential"
_NAME_ADVICE = "names are labels, never personal data or a credential"


def problem(field: str, kind: str, *, name: bool = False) -> str:
    """The readable reason a field is refused: ``user_id looks like an e-mail address: send ...``."""
    return f"{field} looks like {kind}: {_ADVICE.get(field, _NAME_ADVICE if name else _ID_ADVICE)}"


# --- Redaction of a rejected event's bytes.

REDACTED = {EMAIL: "[redacted e-mail]", SECRET: "[redacted secret]", CARD: "[redacted card]", PHONE: "[redacted phone]"}


def _card_marker(match: re.Match[str]) -> str:
    return REDACTED[CARD] if _card_ok(match) else match.group()


def _redact_emails(text: str) -> str:
    """``text`` with its e-mail addresses redacted: found from each ``@``, faster than by ``_EMAIL``."""
    pieces, start, backwards = [], 0, text[::-1]
    for domain in _EMAIL_DOMAIN.finditer(text):
        at = domain.start()
        local = _EMAIL_LOCAL.match(backwards, len(text) - at)  # the local part, read backwards from the @
        if local is not None and at - (local.end() - local.start()) >= start:
            pieces += [text[start : at - (local.end() - local.start())], REDACTED[EMAIL]]
            start = domain.end()
    text = "".join([*pieces, text[start:]])
    return _EMAIL.sub(REDACTED[EMAIL], text) if "@" in text and _EMAIL.search(text) else text


def redact(text: str) -> str:
    """``text`` with each e-mail address, secret, card number and phone number replaced by a marker."""
    if "@" in text:
        text = _redact_emails(text)
    if _SECRET_HINT(text):
        text = _SECRET_PREFIXES.sub(REDACTED[SECRET], text)
    if "+" in text:  # before the grouped form, which "+1 415 555 0123" also holds
        text = _PHONE_E164.sub(REDACTED[PHONE], text)
    if _DIGITS(text):
        if "00" in text:  # before the card and grouped forms, which "0044 20 7946 0958" may also hold
            text = _PHONE_00.sub(REDACTED[PHONE], text)
        text = _CARD.sub(_card_marker, text)
        text = _PHONE_GROUPED.sub(REDACTED[PHONE], text)
    return text


def _redact_name(text: str) -> str:
    text = redact(text)
    if len(text) >= 32 and _TOKEN_RUN.search(text):
        text = _TOKEN_RUN.sub(lambda m: REDACTED[SECRET] if _is_token(m.group()) else m.group(), text)
    return text


NAME_FIELDS = frozenset({"provider", "model", "feature", "prompt_version", "team", "environment", "tool_name"})
"""The fields whose values are names (``name_kind``), and which camelCase alias stands for one."""
_NAME_KEYS = NAME_FIELDS | {"error_type", "endpointTag", "promptVersion"}
EVENT_FIELDS = _NAME_KEYS | {
    "event_id", "externalRequestId", "ts", "agent_id", "task_id", "session_id", "trace_id", "parent_id", "user_id",
    "userId", "tenant_id", "data_mode", "dataMode", "prompt_hash", "args_hash", "kind", "input_tokens",
    "inputTokens", "output_tokens", "outputTokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost_usd", "latency_ms", "latencyMs", "ttft_ms", "status", "attempt",
}  # fmt: skip
"""The fields of a call event (and their camelCase names) whose values are screened by their own rule when
redacted. Any other value (a tag's, an unknown field's, an array's) is screened by the stricter tag rules."""

# A JSON string (closed, or cut off at the end of the text) and whether a colon makes it a name, or a number.
_JSON_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)(?:"|\\?\Z)(\s*:)?|(?<![\w.])-?[0-9][0-9.eE+-]{6,}(?![\w.])', re.S)
_AFTER_NAME = re.compile(r"\s*").fullmatch


def _redacted_value(value: str, key: str | None) -> str:
    """``value`` of the field ``key`` (``None``: an array's, or none to be seen) with what its rules find redacted."""
    if key in _NAME_KEYS:
        return _redact_name(value)
    if key in EVENT_FIELDS:
        return redact(value)
    kind = sensitive_kind(value)
    return REDACTED[kind] if kind is not None else _redact_name(value)


def _short_and_clean(value: str) -> bool:
    """Whether no rule can find anything in ``value`` (most names and values of an event): shorter than
    any secret or token, no ``@``, and fewer digits than any phone or card number."""
    return len(value) < 19 and "@" not in value and sum(map(str.isdigit, value)) < 7


def _json_string(body: str) -> str:
    """The text of a JSON string's body, its escapes (``\\u0040``) read; as it is if they cannot be."""
    if "\\" not in body:
        return body
    try:
        decoded = orjson.loads(f'"{body}"'.encode("utf-8", "surrogatepass"))
    except (orjson.JSONDecodeError, UnicodeEncodeError):
        return body
    return decoded if isinstance(decoded, str) else body


def _redact_tokens(text: str) -> str:
    """``text`` with each JSON string and long number found in it redacted by its field's rule.

    No parser: a malformed event, an array of events or a cut-off one is read as well as a valid one.
    A string followed by a colon is a name, the field of the value right after it; it is an event's
    field only in the outermost object (a tag named ``team`` is a tag, screened as tags are).
    """
    pieces: list[str] = []
    start = seen = depth = 0
    key: str | None = None
    key_end = -1
    for token in _JSON_TOKEN.finditer(text):
        gap = text[seen : token.start()]
        depth += gap.count("{") - gap.count("}")
        seen = token.end()
        body, is_name = token.group(1), token.group(2) is not None
        field = key if key_end >= 0 and _AFTER_NAME(text, key_end, token.start()) else None
        if body is None:  # a number: only where a label is due (a tag's value, an unknown field's)
            if field not in EVENT_FIELDS and (kind := sensitive_kind(token.group())) is not None:
                pieces += [text[start : token.start()], f'"{REDACTED[kind]}"']
                start = token.end()
            continue
        value = _json_string(body)
        redacted = value if _short_and_clean(value) else redact(value) if is_name else _redacted_value(value, field)
        if is_name:
            key, key_end = (value if depth == 1 else None), token.end()
        if redacted != value:
            closing = token.group()[len(body) + 1 :]
            pieces += [text[start : token.start()], '"', orjson.dumps(redacted).decode()[1:-1], closing]
            start = token.end()
    return "".join([*pieces, text[start:]]) if pieces else text


def _utf16(raw: bytes) -> str | None:
    """The encoding of ``raw`` when it is UTF-16: it starts with a byte-order mark, or most of its odd (or
    even) bytes are zeros, as in UTF-16 text of Latin letters; ``None`` otherwise."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16-le" if raw[0] == 0xFF else "utf-16-be"
    if len(raw) < 4 or b"\x00" not in raw:
        return None
    pairs = len(raw) // 2
    if raw[1::2].count(0) * 2 > pairs:
        return "utf-16-le"
    if raw[0::2].count(0) * 2 > pairs:
        return "utf-16-be"
    return None


def redact_raw(raw: bytes) -> bytes:
    """A rejected event's bytes with personal data and secrets replaced by markers (``[redacted e-mail]``).

    Whatever they hold: JSON or not, an object, an array or a cut-off piece, UTF-8 (invalid bytes kept as
    they are) or UTF-16 (with a byte-order mark, or looking like it). The text is redacted as it is by
    the rules of every field; then each JSON string in it (escapes read) by its field's rule: a name's,
    an id's, and the tag rules for any other value (a tag's, an array's, an unknown field's), which
    refuse any phone-like run of digits and any key-like token; so does a long number where a label is
    due. The bytes stay as they arrived but for the markers, in the encoding they came in.
    """
    encoding = _utf16(raw)
    if encoding is None:
        text = raw.decode("utf-8", "surrogateescape")
        redacted = _redact_tokens(redact(text))
        return raw if redacted == text else redacted.encode("utf-8", "surrogateescape")
    bom = 2 if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else 0
    end = bom + (len(raw) - bom) // 2 * 2  # an odd byte at the end is kept as it came
    text = raw[bom:end].decode(encoding, "surrogatepass")
    redacted = _redact_tokens(redact(text))
    if redacted == text:
        return raw
    return raw[:bom] + redacted.encode(encoding, "surrogatepass") + raw[end:]


# --- Pseudonymous user ids, as the SDK makes them (``producers.pseudonymize``).

PSEUDONYM_PREFIX = "u_"
MIN_KEY_BYTES = 16
"""The shortest HMAC key taken, as in the SDK."""
_PSEUDONYM = re.compile(r"u_[0-9a-f]{32}").fullmatch


def pseudonym(user_id: str, key: bytes) -> str:
    """``u_`` and 32 hex digits of HMAC-SHA256(key, user_id); an id already in that form as it is."""
    if _PSEUDONYM(user_id):
        return user_id  # hashing it again would split one user in two
    digest = hmac.new(key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:32]


class Pseudonyms:
    """The SDK's pseudonym of a user id: ``u_`` and 32 hex digits of HMAC-SHA256(key, id).

    The SDK's and the worker's pseudonyms of one user agree when they share the key. An id already
    in that form is kept (hashing it again would split one user in two). Recent ids are remembered:
    a worker sees the same users over and over.

    Args:
        key: the HMAC key (``SPENDSTREAM_USER_ID_KEY``), at least 16 bytes.
        remembered: how many ids to remember at most.
    """

    def __init__(self, key: bytes, remembered: int = 65_536) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the user id key is {len(key)} bytes long; use at least {MIN_KEY_BYTES} random bytes")
        self._key = key
        self._remembered = remembered
        self._known: dict[str, str] = {}

    def __repr__(self) -> str:
        return "Pseudonyms(key=<hidden>)"

    def __call__(self, user_id: str) -> str:
        known = self._known.get(user_id)
        if known is None:
            if len(self._known) >= self._remembered:
                self._known.clear()
            known = self._known[user_id] = pseudonym(user_id, self._key)
        return known
