"""Token usage read from OpenAI and Anthropic response objects, in spendstream's one convention.

``input_tokens`` counts every prompt token, cached ones included, and ``cache_read_tokens`` /
``cache_write_tokens`` say how many were read from or written to the cache; ``output_tokens`` counts
every generated token, reasoning included, and ``reasoning_tokens`` says how many were reasoning.
OpenAI already reports this way; Anthropic reports cache reads and writes apart from
``input_tokens``, so they are added in.

Works on the packages' pydantic objects and on the same data as plain dicts (``model_dump()``,
a JSON body), for full responses and for the usage-bearing events of a stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def merge(self, later: Usage) -> Usage:
        """Combine two reports of one call: a stream reports input first and output at the end."""
        return Usage(*(max(a, b) for a, b in zip(self.as_tuple(), later.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(obj: Any, *path: str) -> int:
    for name in path:
        obj = _get(obj, name)
    return obj if isinstance(obj, int) and not isinstance(obj, bool) and obj > 0 else 0


def usage_of(usage: Any) -> Usage | None:
    """The usage in a provider's ``usage`` object, or None when it is not one spendstream knows."""
    if usage is None:
        return None
    if _get(usage, "prompt_tokens") is not None:  # OpenAI Chat Completions
        return _openai(usage, "prompt_tokens", "completion_tokens")
    if _get(usage, "input_tokens_details") is not None:  # OpenAI Responses
        return _openai(usage, "input_tokens", "output_tokens")
    if _get(usage, "input_tokens") is not None or _get(usage, "output_tokens") is not None:  # Anthropic
        cache_read = _int(usage, "cache_read_input_tokens")
        cache_write = _int(usage, "cache_creation_input_tokens")
        return Usage(
            input_tokens=_int(usage, "input_tokens") + cache_read + cache_write,
            output_tokens=_int(usage, "output_tokens"),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=_int(usage, "output_tokens_details", "thinking_tokens"),
        )
    return None


def _openai(usage: Any, prompt: str, completion: str) -> Usage:
    """OpenAI's two usage shapes differ only in names: ``prompt_tokens`` or ``input_tokens``, and their details."""
    return Usage(
        input_tokens=_int(usage, prompt),
        output_tokens=_int(usage, completion),
        cache_read_tokens=_int(usage, f"{prompt}_details", "cached_tokens"),
        cache_write_tokens=_int(usage, f"{prompt}_details", "cache_write_tokens"),
        reasoning_tokens=_int(usage, f"{completion}_details", "reasoning_tokens"),
    )


def usage_from(response: Any) -> Usage | None:
    """The usage carried by a response or a stream event, if any.

    Understands OpenAI ``ChatCompletion``, ``ChatCompletionChunk`` (with
    ``stream_options={"include_usage": True}``) and Responses API objects and events, and Anthropic
    ``Message``, ``message_start`` and ``message_delta`` events.
    """
    found = usage_of(_get(response, "usage"))
    if found is not None:
        return found
    for holder in ("message", "response"):  # Anthropic message_start, OpenAI response.completed
        found = usage_of(_get(_get(response, holder), "usage"))
        if found is not None:
            return found
    return None


def model_from(response: Any) -> str | None:
    """The model a response says served it (e.g. ``gpt-4o-2024-08-06``)."""
    for candidate in (response, _get(response, "message"), _get(response, "response")):
        model = _get(candidate, "model")
        if isinstance(model, str) and model:
            return model
    return None
