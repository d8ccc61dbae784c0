"""Token usage of one answer, and its estimate when an upstream reports none."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from translator.registry import Pricing


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one completion.

    `input_tokens` counts the whole prompt (OpenAI's `prompt_tokens`), cached
    parts included; `cache_read_tokens` / `cache_write_tokens` say how much of it
    was read from or written to a prompt cache, where the provider reports it.
    `estimated` is true when the gateway counted approximately because the
    upstream reported nothing (see :func:`estimate_text_tokens`).
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def cost_usd(self, pricing: Pricing) -> float:
        """Cost at the registry's per-1k prices (no separate cache pricing yet)."""
        return pricing.cost_usd(self.input_tokens, self.output_tokens)

    def as_openai(self) -> dict[str, Any]:
        """The OpenAI `usage` object for these counts."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        return usage


# Token estimation, for upstreams that report no usage. About four characters
# per token is the usual figure for English text with BPE tokenizers; it is an
# approximation (within tens of percent), flagged by Usage.estimated.
CHARS_PER_TOKEN = 4
# Chat formats add a few tokens of framing per message and to prime the reply
# (OpenAI's documented rule of thumb: 3 per message, 3 for the reply).
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3


def estimate_text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Approximate prompt tokens of an OpenAI Chat Completions body."""
    messages = body.get("messages")
    chars = 0
    count = 0
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            count += 1
            chars += _text_chars(message.get("content"))
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    chars += len(json.dumps(call.get("function", {}), separators=(",", ":")))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        # Tool schemas are part of the prompt the model sees.
        chars += len(json.dumps(tools, separators=(",", ":")))
    return estimate_text_tokens(chars) + TOKENS_PER_MESSAGE * count + TOKENS_REPLY_PRIMING


def estimate_completion_usage(body: Mapping[str, Any], completion: Mapping[str, Any]) -> Usage:
    """Approximate usage of a non-streamed OpenAI `chat.completion`."""
    chars = 0
    for choice in completion.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        chars += _text_chars(message.get("content"))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                chars += len(json.dumps(call.get("function", {}), separators=(",", ":")))
    return Usage(estimate_prompt_tokens(body), estimate_text_tokens(chars), estimated=True)
