"""Every provider's non-streamed answer parser refuses a body that is not a JSON object
the same way: a bad upstream response (502, fail over to the next endpoint)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.providers.anthropic.translate import parse_message
from gateway.providers.failures import BAD_UPSTREAM_RESPONSE, AttemptFailed, AttemptFailure
from gateway.providers.openai_compatible.translate import parse_completion
from gateway.providers.vertex.gemini import parse_response


def _same(text: str) -> str:
    return text


PARSERS: dict[str, Callable[[bytes], Any]] = {
    "openai-compatible": parse_completion,
    "anthropic": lambda raw: parse_message(raw, redact=_same),
    "gemini": lambda raw: parse_response(raw, model="gemini", redact=_same),
}


@pytest.mark.parametrize("provider", sorted(PARSERS))
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "the upstream's answer is not JSON"),
        (b'["a list"]', "the upstream's answer is not a JSON object"),
    ],
)
def test_an_answer_that_is_not_a_json_object_is_a_bad_response(
    provider: str, raw: bytes, message: str
) -> None:
    with pytest.raises(AttemptFailed) as info:
        PARSERS[provider](raw)
    assert info.value.failure == AttemptFailure(502, BAD_UPSTREAM_RESPONSE, message, True)
